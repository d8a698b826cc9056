"""Dataset writing: FFHQ / photo realignment with 3DMM labels (`builder`), the built-in synthetic world
(`synthetic_scenes`) and its cached smoke dataset (`builtin`). Used by dataset_tool.py and the smoke preset."""
