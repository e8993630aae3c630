"""The exception nanovlm raises for a bad checkpoint, config or weights download."""


class CheckpointError(ValueError):
    """Its message starts with the file or source at fault: "<file>: <what is wrong>"."""
