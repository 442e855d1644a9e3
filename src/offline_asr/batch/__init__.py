"""Bulk transcription: many files to one resumable, kill-safe JSON-lines file with provenance."""
