"""The model registry: manifest store, integrity checks, sources and preparation."""
