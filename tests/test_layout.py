"""The architecture holds: no import cycle among the project's modules, no import from a higher layer of the data
flow (tests/import_graph.py's LAYERS), and the bundled nanoVLM stands alone."""
from import_graph import climbing, cycles, edges, layer, modules


def test_no_import_cycle():
    assert cycles(edges()) == []


def test_no_import_climbs_a_layer():
    assert climbing(edges()) == []


def test_nanovlm_imports_nothing_of_vlm_grades():
    graph = edges()
    assert not [(a, b) for a, bs in graph.items() for b in bs
                if a.startswith("nanovlm") and not b.startswith("nanovlm")]


def test_the_graph_sees_lazy_imports_and_cycles():
    # the checks above would pass vacuously if the reader missed imports: it must find the loop's own imports,
    # the lazy ones inside functions, and a cycle in a graph that has one
    graph = edges()
    assert "vlm_grades.parallel" in graph["vlm_grades.training.loop"]
    assert "vlm_grades.models.nanovlm" in graph["vlm_grades.models"]       # imported inside build_adapter
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("vlm_grades.training.loop") > layer("vlm_grades.parallel.fsdp") > layer("vlm_grades.grades.engine")
    assert len(modules()) > 80
