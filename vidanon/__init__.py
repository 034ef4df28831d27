"""vidanon: reversible, key-conditioned face anonymization for CCTV video.

    from vidanon import anonymize_video, deanonymize_video, inspect_video, load_config

The names are imported lazily so that `import vidanon` (and `vidanon --help`) stays fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "anonymize_video": "anonymize",
    "deanonymize_video": "restore",
    "inspect_video": "manifest",
    "Result": "stages",
    "Config": "config",
    "load_config": "config",
    "load_model": "models",
    "generate_master_key": "keys",
    "save_master_key": "keys",
    "load_master_key": "keys",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vidanon' has no attribute {name!r}")
