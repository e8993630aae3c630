"""Per-modality convergence reports of run folders. Submodules import matplotlib; this one stays light."""

FORMATS = ("html", "png", "json", "md")
EXTRA_FORMATS = ("csv",)  # components.csv, on request
