"""offline-asr: Whisper and GigaAM delivered, verified and served offline, with an audit trail."""

from importlib.metadata import PackageNotFoundError, version

from offline_asr.asr.pins import pin_runtime
from offline_asr.offline import disable_telemetry

# Before anything imports onnxruntime or a hub library: they read their switches only once.
disable_telemetry()
# Before any module of ours imports numpy, CTranslate2 or onnxruntime: they read their CPU
# dispatch and thread settings from the environment when they load (see `pins`).
pin_runtime()

try:
    __version__ = version("offline-asr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
