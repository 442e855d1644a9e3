// The live mode: microphone -> /v1/realtime (OpenAI's Realtime transcription events) -> text.
// The settings (model, language, API key) are the form's; the server's VAD ends sentences.
"use strict";

(() => {
  const RATE = 24000; // what OpenAI's realtime clients send; the server resamples to 16 kHz
  const CHUNK = RATE / 10; // samples per append: 100 ms
  const STOP_WAIT_MS = 30000; // after Stop: time for the server to finish the last sentence

  const $ = (id) => document.getElementById(id);
  const button = $("live-button");
  const status = $("live-status");
  const transcript = $("live-transcript");
  const partial = $("live-partial");
  const errorBox = $("live-error");

  let live = null; // {socket, context, stream, pending: Set of item ids}

  function setStatus(text) { status.textContent = text; }

  function showError(text) { errorBox.textContent = text; }

  function setButton(on) {
    button.dataset.live = String(on);
    button.querySelector(".live-text").textContent = on ? "Stop" : "Start live";
  }

  function base64(int16) {
    const bytes = new Uint8Array(int16.buffer, int16.byteOffset, int16.byteLength);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/v1/realtime?intent=transcription`;
  }

  function onEvent(event) {
    const kind = event.type;
    if (kind === "input_audio_buffer.speech_started") {
      setStatus("Hearing speech…");
    } else if (kind === "input_audio_buffer.committed") {
      live && live.pending.add(event.item_id);
    } else if (kind === "conversation.item.input_audio_transcription.delta") {
      partial.textContent += event.delta || "";
    } else if (kind === "conversation.item.input_audio_transcription.completed") {
      const line = document.createElement("p");
      line.dataset.testid = "live-turn";
      line.textContent = event.transcript;
      transcript.insertBefore(line, partial);
      partial.textContent = "";
      finished(event.item_id);
      setStatus(live && live.socket ? "Listening." : "");
    } else if (kind === "conversation.item.input_audio_transcription.failed") {
      showError(event.error && event.error.message || "A sentence could not be transcribed.");
      finished(event.item_id);
    } else if (kind === "error") {
      if (event.error.code !== "input_audio_buffer_commit_empty") showError(event.error.message);
      else if (live && live.stopping && live.pending.size === 0) live.socket.close();
    }
  }

  function finished(item) {
    if (!live) return;
    live.pending.delete(item);
    if (live.stopping && live.pending.size === 0) live.socket.close();
  }

  async function start() {
    showError("");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser cannot use a microphone here (it needs https or localhost).");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false,
                 autoGainControl: false },
      });
    } catch (error) {
      showError(`The microphone is not available (${error.message}).`);
      return;
    }
    const context = new AudioContext({ sampleRate: RATE });
    await context.audioWorklet.addModule("/static/live-capture.js");
    const key = $("api-key").value.trim();
    const protocols = ["realtime", ...(key ? [`openai-insecure-api-key.${key}`] : [])];
    const socket = new WebSocket(socketUrl(), protocols);
    live = { socket, context, stream, pending: new Set(), stopping: false };
    setButton(true);
    setStatus("Connecting…");
    socket.onmessage = (message) => onEvent(JSON.parse(message.data));
    socket.onclose = (close) => {
      if (live && !live.stopping && close.code !== 1000) {
        showError(close.code === 1006
          ? "The server refused the connection (is an API key needed?)."
          : `The server ended the session (${close.reason || close.code}).`);
      }
      teardown();
    };
    socket.onopen = () => {
      const language = $("language").value.trim();
      socket.send(JSON.stringify({ type: "session.update", session: {
        type: "transcription",
        audio: { input: {
          format: { type: "audio/pcm", rate: RATE },
          transcription: { model: $("model").value, language: language || null },
          turn_detection: { type: "server_vad" },
        } },
      } }));
      const source = context.createMediaStreamSource(stream);
      const capture = new AudioWorkletNode(context, "offline-asr-capture");
      let block = new Int16Array(CHUNK);
      let filled = 0;
      capture.port.onmessage = (message) => {
        for (const sample of message.data) {
          block[filled++] = Math.max(-32768, Math.min(32767, Math.round(sample * 32768)));
          if (filled === CHUNK) {
            if (socket.readyState === WebSocket.OPEN && !live.stopping) {
              socket.send(JSON.stringify({ type: "input_audio_buffer.append",
                                           audio: base64(block) }));
            }
            block = new Int16Array(CHUNK);
            filled = 0;
          }
        }
      };
      source.connect(capture);
      setStatus("Listening.");
    };
  }

  function stop() {
    if (!live || live.stopping) return;
    live.stopping = true;
    live.stream.getTracks().forEach((track) => track.stop());
    live.context.close();
    setStatus("Finishing the last sentence…");
    const { socket } = live;
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
      setTimeout(() => socket.close(), STOP_WAIT_MS);
    } else {
      socket.close();
    }
  }

  function teardown() {
    if (!live) return;
    live.stream.getTracks().forEach((track) => track.stop());
    if (live.context.state !== "closed") live.context.close();
    live = null;
    setButton(false);
    setStatus("");
  }

  button.addEventListener("click", () => (live ? stop() : start()));
})();
