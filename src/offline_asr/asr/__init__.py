"""Speech recognition: engines, the loader (model id -> verified engine), runtime pins, audio,
the transcription pipeline, output formats, smoke tests. Nothing is imported here: `import
offline_asr` pins the runtime (`asr.pins`) before NumPy or an engine loads."""
