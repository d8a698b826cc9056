"""Dataset writing: FFHQ / photo realignment with 3DMM labels (`builder`, `photo_landmarks`, `landmarks`), the
dataset report of `dataset_tool.py info` (`info`), the built-in synthetic world (`synthetic_scenes`) and its cached
smoke dataset and FR (`builtin`). Used by dataset_tool.py and the smoke preset."""
