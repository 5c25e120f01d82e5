"""Models: where a model comes from (`sources`: one definition per source kind, resolving hub ids,
folders, GGUF files, built-in offline wheels and scratch presets for every stage), the built-in
list (`builtins`), scratch presets (`scratch`) and cheap folder checks (`integrity`).

The package imports nothing itself, so reading one of its light modules does not load the others."""
