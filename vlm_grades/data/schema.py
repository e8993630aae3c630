"""The one sample schema every data reader yields and every model adapter consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from vlm_grades.errors import UserError

ImageRef = Union[str, Path, Image.Image, bytes]


@dataclass
class Sample:
    id: str                   # unique within its data set: question id, or image id for captions
    image: ImageRef           # a path (decoded lazily, in DataLoader workers) or an already decoded image
    prompt: str               # the task prompt, without any chat template
    targets: list[str]        # reference answers / captions; targets[0] is the default training target
    task: str                 # "easyvqa", "vqav2", "gqa" or "coco"
    meta: dict[str, Any] = field(default_factory=dict)  # what scoring needs: answer_type, image_id, ...


def load_image(ref: ImageRef) -> Image.Image:
    """Decode an image to RGB; a missing or non-image file is a UserError naming the file."""
    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, bytes):
        import io
        try:
            with Image.open(io.BytesIO(ref)) as im:
                return im.convert("RGB")
        except Exception as e:
            raise UserError(f"image bytes are not a readable image: {e}") from None
    path = Path(ref)
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
