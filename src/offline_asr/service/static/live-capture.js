// Audio worklet of the live mode: hands the microphone's samples to the page in blocks.
"use strict";

class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}

registerProcessor("offline-asr-capture", Capture);
