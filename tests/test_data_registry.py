"""load_samples dispatch: layout detection, hub ids, prompts, easy-VQA, errors that say what was expected."""
import pytest

from fixtures_data import write_coco, write_hf_coco, write_hf_gqa, write_hf_vqav2, write_vqav2
from vlm_grades.data import prompts
from vlm_grades.data.registry import load_samples
from vlm_grades.errors import UserError


def test_prompt_templates():
    assert prompts.resolve_template("vqav2") == "{question}\nAnswer the question using a single word or phrase."
    assert prompts.resolve_template("gqa") == prompts.resolve_template("vqav2")
    assert prompts.resolve_template("coco") == "Provide a one-sentence caption for the provided image."
    assert prompts.resolve_template("easyvqa") == "Question: {question} Answer:"
    t = prompts.resolve_template("vqav2", "Q: {question}\\nA ({short}):")      # typed on a shell: backslash-n
    assert prompts.render(t, "why?") == "Q: why?\nA ({short}):"
    with pytest.raises(UserError, match="--prompt: .*must contain \\{question\\}"):
        prompts.resolve_template("gqa", "Answer briefly.")
    assert prompts.resolve_template("coco", "Describe the image.") == "Describe the image."


def test_prompt_override_reaches_samples(tmp_path):
    d = write_vqav2(tmp_path)
    s = load_samples("vqav2", d["source"], split="val", prompt="Q: {question} A:", max_samples=1)[0]
    assert s.prompt == f"Q: {s.meta['question']} A:"


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="--task: unknown task 'vqa3'"):
        load_samples("vqa3", str(tmp_path))
    with pytest.raises(UserError, match="--max-samples"):
        load_samples("coco", str(tmp_path), max_samples=0)
    with pytest.raises(UserError, match="--data: task 'gqa' needs a data source.*lmms-lab/GQA"):
        load_samples("gqa", None)
    with pytest.raises(UserError, match="no such file or folder, and not a Hugging Face data set id"):
        load_samples("vqav2", str(tmp_path / "absent" / "dir"))


@pytest.mark.parametrize("task,hint", [
    ("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json"),
    ("gqa", "val_balanced_questions.json"),
    ("coco", "annotations/captions_val2017.json"),
])
def test_nothing_fits_lists_what_was_expected(tmp_path, task, hint):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match=f"no {task} data for split 'val' found; expected .*{hint}.*Hugging Face"):
        load_samples(task, str(tmp_path), split="val")


def test_wrong_split_in_official_folder(tmp_path):
    d = write_vqav2(tmp_path, split="val")
    with pytest.raises(UserError, match="v2_OpenEnded_mscoco_train2014_questions.json"):
        load_samples("vqav2", d["source"], split="train")


def test_hf_folder_of_the_wrong_task(tmp_path):
    d = write_hf_coco(tmp_path)
    with pytest.raises(UserError, match="not a VQAv2 data set: expected the lmms-lab/VQAv2 columns"):
        load_samples("vqav2", d["source"], split="val")


def test_hf_parquet_split_not_present(tmp_path):
    d = write_hf_vqav2(tmp_path, fmt="parquet", split="validation")
    with pytest.raises(UserError, match="no parquet files for split 'train'.*validation"):
        load_samples("vqav2", d["source"], split="train")


@pytest.mark.parametrize("streaming", [False, True])
def test_folder_mixing_data_sets_names_the_files_and_their_columns(tmp_path, streaming):
    write_hf_vqav2(tmp_path, fmt="parquet", split="validation")   # data/validation-00000-of-00001.parquet
    write_hf_coco(tmp_path, fmt="parquet", split="val")            # data/val-00000-of-00001.parquet
    with pytest.raises(UserError) as e:
        list(load_samples("vqav2", str(tmp_path), split="validation", streaming=streaming))
    message = str(e.value)
    assert "\n" not in message
    for name in ("data/validation-00000-of-00001.parquet", "data/val-00000-of-00001.parquet",
                 "multiple_choice_answer", "answer_type", "file_name", "coco_url"):
        assert name in message, message
    assert "question_id (int64 vs string)" in message                    # the same name, another type
    assert "image," not in message and "question," not in message       # the same in both


class _Hub:
    """Stands in for datasets.load_dataset: records the calls, serves local data sets."""

    def __init__(self, tables):
        self.tables, self.calls = tables, []

    def __call__(self, path, name=None, split=None, streaming=False, **kw):
        self.calls.append((path, name, split, streaming))
        if (path, name, split) not in self.tables:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")
        ds = self.tables[(path, name, split)]
        return ds.to_iterable_dataset() if streaming else ds


def test_hub_ids_call_load_dataset(tmp_path, monkeypatch):
    import datasets

    vqa = write_hf_vqav2(tmp_path / "v")["dataset"]
    coco = write_hf_coco(tmp_path / "c")["dataset"]
    write_hf_gqa(tmp_path / "g")
    gqa_q = datasets.load_from_disk(str(tmp_path / "g" / "testdev_balanced_instructions"))
    gqa_i = datasets.load_from_disk(str(tmp_path / "g" / "testdev_balanced_images"))
    hub = _Hub({("lmms-lab/VQAv2", None, "validation"): vqa, ("lmms-lab/COCO-Caption2017", None, "val"): coco,
                ("lmms-lab/GQA", "testdev_balanced_instructions", "testdev"): gqa_q,
                ("lmms-lab/GQA", "testdev_balanced_images", "testdev"): gqa_i})
    monkeypatch.setattr(datasets, "load_dataset", hub)

    assert len(load_samples("vqav2", "lmms-lab/VQAv2", split="val")) == 6
    assert hub.calls[-1] == ("lmms-lab/VQAv2", None, "validation", False)
    assert len(load_samples("coco", "lmms-lab/COCO-Caption2017", split="val")) == 3
    assert len(load_samples("gqa", "lmms-lab/GQA", split="testdev_balanced")) == 6
    assert hub.calls[-2:] == [("lmms-lab/GQA", "testdev_balanced_instructions", "testdev", False),
                              ("lmms-lab/GQA", "testdev_balanced_images", "testdev", False)]
    stream = load_samples("vqav2", "lmms-lab/VQAv2", split="val", streaming=True, max_samples=2)
    assert len(list(stream)) == 2 and hub.calls[-1][3] is True
    with pytest.raises(UserError, match="^someone/missing: no such local file or folder, and could not load it as a "
                                        "Hugging Face data set \\(split 'val'\\): FileNotFoundError"):
        load_samples("coco", "someone/missing", split="val")


def test_easyvqa_dispatch():
    samples = load_samples("easyvqa", split="test", max_samples=5, shuffle=True, seed=1)
    assert len(samples) == 5 and all(s.task == "easyvqa" for s in samples)
    assert samples[0].prompt.startswith("Question: ") and samples[0].prompt.endswith(" Answer:")
    again = load_samples("easyvqa", split="test", max_samples=5, shuffle=True, seed=1)
    assert [s.id for s in again] == [s.id for s in samples]
    custom = load_samples("easyvqa", split="test", max_samples=2, prompt="{question}\\nShort answer:")
    assert custom[0].prompt.endswith("?\nShort answer:")
    captions = load_samples("easyvqa-caption", split="test", max_samples=3)
    assert len(captions) == 3 and captions[0].targets[0].startswith("a ")


def test_streaming_official_source_reports_at_end(tmp_path):
    d = write_coco(tmp_path)
    d["images"][285].unlink()
    stream = load_samples("coco", d["source"], split="val", streaming=True)
    assert [s.id for s in stream] == ["139", "632"]
    assert stream.skipped == 1 and "1 missing image" in stream.summary


def test_hf_dataset_dict_and_single_parquet_file(tmp_path):
    import datasets

    ds = write_hf_vqav2(tmp_path / "src")["dataset"]
    datasets.DatasetDict({"validation": ds, "testdev": ds.select(range(2))}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_samples("vqav2", str(tmp_path / "dict"), split="val")) == 6
    assert len(load_samples("vqav2", str(tmp_path / "dict"), split="test-dev", allow_unanswered=True)) == 2
    with pytest.raises(UserError, match="no split 'train'; it has validation, testdev"):
        load_samples("vqav2", str(tmp_path / "dict"), split="train")
    ds.to_parquet(str(tmp_path / "one.parquet"))
    assert len(load_samples("vqav2", str(tmp_path / "one.parquet"), split="val", max_samples=3)) == 3


def test_streaming_fails_early_on_a_source_that_fits_nothing(tmp_path):
    with pytest.raises(UserError, match="no coco data for split 'val' found"):
        load_samples("coco", str(tmp_path), split="val", streaming=True)
