"""offline-asr: Whisper and GigaAM delivered, verified and served offline, with an audit trail."""

from importlib.metadata import PackageNotFoundError, version

from offline_asr.offline import disable_telemetry

# Before anything imports onnxruntime or a hub library: they read their switches only once.
disable_telemetry()

try:
    __version__ = version("offline-asr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
