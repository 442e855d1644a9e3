// The transcription page: plain JavaScript against the server's own OpenAI-compatible API.
// No framework, no build step and nothing fetched from elsewhere: it runs in a closed network.
"use strict";

(() => {
  const KEY_STORAGE = "offline-asr.api-key"; // sessionStorage only: gone when the tab closes
  const MODEL_STORAGE = "offline-asr.model";
  const RECORDING_TYPES = [
    ["audio/webm;codecs=opus", ".webm"],
    ["audio/webm", ".webm"],
    ["audio/ogg;codecs=opus", ".ogg"],
    ["audio/ogg", ".ogg"],
    ["audio/mp4", ".m4a"],
  ];

  const $ = (id) => document.getElementById(id);
  const form = $("transcribe-form");
  const modelSelect = $("model");
  const modelStatus = $("model-status");
  const languageInput = $("language");
  const languageList = $("language-list");
  const keyInput = $("api-key");
  const fileInput = $("file");
  const recordButton = $("record");
  const recordStatus = $("record-status");
  const preview = $("preview");
  const selected = $("selected");
  const transcribeButton = $("transcribe");
  const busyStatus = $("busy-status"); // announced once per change: no ticking timers in it
  const busyTimer = $("busy-timer");
  const recordTimer = $("record-timer");
  const errorBox = $("error");
  const result = $("result");
  const segmentList = $("segments");
  const downloadButtons = document.querySelectorAll("[data-format]");
  const downloadStatus = $("download-status");

  let models = [];
  let source = null; // {blob, name, label}: the audio the next transcription sends
  let last = null; // what answered last: {source, model, language, files: {srt, vtt}}
  let busy = false;

  // ---- storage that may be unavailable (private mode, disabled storage) ----------------------
  const session = {
    get(key) {
      try { return window.sessionStorage.getItem(key) || ""; } catch { return ""; }
    },
    set(key, value) {
      try {
        if (value) window.sessionStorage.setItem(key, value);
        else window.sessionStorage.removeItem(key);
      } catch { /* the page still works, it only forgets */ }
    },
  };

  // ---- the API ------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, init = {}) {
    const headers = new Headers(init.headers || {});
    const key = keyInput.value.trim();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (error) {
      throw new ApiError(`Could not reach the server (${error.message}). Is it running?`, 0);
    }
    if (response.ok) return response;
    let message = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch { /* not JSON: keep the status line */ }
    if (response.status === 401) {
      message += key ? " The API key was refused." : " Enter the server's API key above.";
    }
    throw new ApiError(message, response.status);
  }

  function transcriptionForm(audio, model, language, format) {
    const body = new FormData();
    body.append("file", audio.blob, audio.name);
    body.append("model", model);
    if (language) body.append("language", language);
    body.append("response_format", format);
    if (format === "verbose_json") body.append("timestamp_granularities[]", "segment");
    return body;
  }

  // ---- models -------------------------------------------------------------------------------
  function describeModel(model) {
    if (model.id === "auto") return "Picks a model by the audio's language.";
    const parts = [model.engine, model.variant].filter(Boolean).join(" ");
    const languages = model.languages || [];
    const langs = languages.length > 6
      ? `${languages.length} languages`
      : `language${languages.length === 1 ? "" : "s"}: ${languages.join(", ")}`;
    const state = model.loaded ? "loaded" : "loads on first use";
    const test = model.structural_test_model
      ? " · structural test model, not GigaAM: its transcripts are meaningless" : "";
    return `${parts} · ${langs} · manifest v${model.manifest_version} · ${state}${test}`;
  }

  function fillLanguages() {
    const model = models.find((m) => m.id === modelSelect.value);
    const codes = new Set();
    for (const m of model && model.id !== "auto" ? [model] : models) {
      for (const code of m.languages || []) codes.add(code);
    }
    languageList.replaceChildren(...[...codes].sort().map((code) => new Option("", code)));
    modelStatus.textContent = model ? describeModel(model) : "";
  }

  async function loadModels() {
    modelStatus.textContent = "Loading the models…";
    modelStatus.classList.remove("bad");
    try {
      const response = await api("/v1/models");
      models = (await response.json()).data || [];
    } catch (error) {
      models = [];
      modelSelect.replaceChildren();
      modelStatus.textContent = `Could not list the models: ${error.message}`;
      modelStatus.classList.add("bad");
      return;
    }
    const wanted = modelSelect.value || session.get(MODEL_STORAGE);
    modelSelect.replaceChildren(...models.map((m) => {
      const label = m.id === "auto" ? "auto (choose by language)"
        : m.structural_test_model ? `${m.id} (structural test model)` : m.id;
      return new Option(label, m.id);
    }));
    // The server's own router first: it picks a model by the audio's language.
    const fallback = models.find((m) => m.id === "auto")
      || models.find((m) => m.loaded) || models[0];
    if (models.some((m) => m.id === wanted)) modelSelect.value = wanted;
    else if (fallback) modelSelect.value = fallback.id;
    if (!models.length) {
      modelStatus.textContent = "The server has no models registered.";
      modelStatus.classList.add("bad");
      return;
    }
    fillLanguages();
  }

  // ---- choosing audio -----------------------------------------------------------------------
  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function choose(audio) {
    source = audio;
    selected.textContent = audio ? audio.label : "nothing yet";
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    if (!file) return;
    choose({ blob: file, name: file.name, label: `${file.name} (${formatBytes(file.size)})` });
    clearError();
  });

  // ---- recording ----------------------------------------------------------------------------
  let recorder = null;
  let recordTicker = 0;

  function setRecording(on) {
    recordButton.dataset.recording = String(on);
    recordButton.classList.toggle("recording", on);
    recordButton.querySelector(".record-text").textContent = on ? "Stop recording" : "Record";
  }

  function recordingUnavailable() {
    if (!window.isSecureContext) {
      return "Recording needs a secure page (HTTPS, or http://localhost); upload a file instead.";
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return "This browser cannot record audio; upload a file instead.";
    }
    if (typeof window.MediaRecorder === "undefined") {
      return "This browser cannot record audio (no MediaRecorder); upload a file instead.";
    }
    return "";
  }

  function microphoneProblem(error) {
    switch (error && error.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Microphone access was denied. Allow it in the browser's site settings, "
          + "or upload a file instead.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No microphone was found. Connect one, or upload a file instead.";
      case "NotReadableError":
      case "AbortError":
        return "The microphone could not be started; another application may be using it.";
      default:
        return `Could not start recording: ${(error && error.message) || error}`;
    }
  }

  async function startRecording() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      recordStatus.textContent = microphoneProblem(error);
      recordStatus.classList.add("bad");
      return;
    }
    const [mimeType, suffix] = RECORDING_TYPES.find(([type]) => {
      return MediaRecorder.isTypeSupported && MediaRecorder.isTypeSupported(type);
    }) || ["", ".webm"];
    let rec;
    try {
      rec = new MediaRecorder(stream, mimeType ? { mimeType } : undefined);
    } catch (error) {
      stream.getTracks().forEach((track) => track.stop());
      recordStatus.textContent = microphoneProblem(error);
      recordStatus.classList.add("bad");
      return;
    }
    const chunks = [];
    const started = Date.now();
    rec.addEventListener("dataavailable", (event) => {
      if (event.data && event.data.size) chunks.push(event.data);
    });
    rec.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop()); // release the microphone
      window.clearInterval(recordTicker);
      recordTimer.textContent = "";
      recorder = null;
      setRecording(false);
      const type = (rec.mimeType || mimeType || "audio/webm").split(";")[0];
      const blob = new Blob(chunks, { type });
      if (!blob.size) {
        recordStatus.textContent = "The recording is empty; try again.";
        recordStatus.classList.add("bad");
        return;
      }
      const seconds = Math.round((Date.now() - started) / 1000);
      const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(blob);
      preview.hidden = false;
      fileInput.value = "";
      choose({
        blob,
        name: `recording-${stamp}${suffix}`,
        label: `a recording, ${seconds} s (${formatBytes(blob.size)})`,
      });
      recordStatus.textContent = `Recorded ${seconds} s.`;
    });
    rec.addEventListener("error", (event) => {
      recordStatus.textContent = microphoneProblem(event.error);
      recordStatus.classList.add("bad");
    });
    rec.start(1000);
    recorder = rec;
    setRecording(true);
    clearError();
    recordStatus.classList.remove("bad");
    recordStatus.textContent = "Recording…";
    recordTimer.textContent = "0 s";
    recordTicker = window.setInterval(() => {
      recordTimer.textContent = `${Math.round((Date.now() - started) / 1000)} s`;
    }, 500);
  }

  recordButton.addEventListener("click", () => {
    if (recorder) {
      recorder.stop();
      return;
    }
    recordStatus.classList.remove("bad");
    startRecording();
  });

  // ---- showing a transcript -----------------------------------------------------------------
  function clock(seconds) {
    const centis = Math.round(Math.max(0, Number(seconds) || 0) * 100);
    const h = Math.floor(centis / 360000);
    const m = Math.floor((centis % 360000) / 6000);
    const s = ((centis % 6000) / 100).toFixed(2).padStart(5, "0");
    const mm = String(m).padStart(2, "0");
    return h ? `${h}:${mm}:${s}` : `${mm}:${s}`;
  }

  function timeElement(seconds) {
    const time = document.createElement("time");
    time.dateTime = `PT${(Number(seconds) || 0).toFixed(3)}S`;
    time.textContent = clock(seconds);
    return time;
  }

  function show(data) {
    const about = data.x_offline_asr || {};
    $("r-model").textContent = about.model_id || "?";
    $("r-manifest").textContent = about.manifest_version ?? "?";
    $("r-fingerprint").textContent = about.fingerprint || "?";
    $("r-language").textContent = data.language || "?";
    $("r-duration").textContent = data.duration != null ? `${Number(data.duration).toFixed(1)} s` : "?";
    const segments = data.segments || [];
    segmentList.replaceChildren(...segments.map((segment) => {
      const item = document.createElement("li");
      item.dataset.testid = "segment";
      const times = document.createElement("span");
      times.className = "times";
      times.dataset.testid = "segment-time";
      times.append(timeElement(segment.start), " → ", timeElement(segment.end));
      const text = document.createElement("span");
      text.className = "text";
      text.dataset.testid = "segment-text";
      text.textContent = String(segment.text || "").trim();
      item.append(times, text);
      return item;
    }));
    $("no-speech").hidden = segments.length > 0;
    downloadStatus.textContent = "";
    downloadStatus.classList.remove("bad");
    result.hidden = false;
  }

  // ---- busy state and errors ----------------------------------------------------------------
  let busyTicker = 0;

  // `what` names the work on the Transcribe button; null leaves the button's text alone.
  function setBusy(on, what = "Transcribing") {
    busy = on;
    transcribeButton.disabled = on;
    transcribeButton.classList.toggle("busy", on);
    transcribeButton.setAttribute("aria-busy", String(on));
    form.setAttribute("aria-busy", String(on));
    if (!on || what) {
      transcribeButton.querySelector(".button-text").textContent = on ? `${what}…` : "Transcribe";
    }
    downloadButtons.forEach((button) => { button.disabled = on; });
    window.clearInterval(busyTicker);
    busyTimer.textContent = "";
    if (on) {
      const started = Date.now();
      if (what) busyStatus.textContent = `${what}…`;
      busyTicker = window.setInterval(() => {
        busyTimer.textContent = `${Math.round((Date.now() - started) / 1000)} s`;
      }, 1000);
    }
  }

  function showError(message) {
    errorBox.textContent = message;
  }

  function clearError() {
    errorBox.textContent = "";
  }

  // ---- transcribe ---------------------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    clearError();
    if (recorder) {
      showError("Stop the recording first.");
      return;
    }
    if (!source) {
      showError("Choose an audio file or record something first.");
      fileInput.focus();
      return;
    }
    const model = modelSelect.value;
    if (!model) {
      showError("No model to choose from: see the message under Model.");
      modelSelect.focus();
      return;
    }
    const language = languageInput.value.trim().toLowerCase();
    const audio = source;
    result.hidden = true;
    last = null;
    setBusy(true);
    try {
      const body = transcriptionForm(audio, model, language, "verbose_json");
      const response = await api("/v1/audio/transcriptions", { method: "POST", body });
      const data = await response.json();
      const about = data.x_offline_asr || {};
      // Downloads ask again with the model and language that answered, so `auto` cannot
      // choose differently the second time.
      last = {
        source: audio,
        model: about.model_id || model,
        language: (about.options && about.options.language) || language,
        files: {},
      };
      show(data);
      busyStatus.textContent = "The transcript is ready.";
      $("result-heading").focus({ preventScroll: true });
      result.scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (error) {
      busyStatus.textContent = "";
      showError(error.message);
    } finally {
      setBusy(false);
    }
  });

  // ---- downloads: the server renders SRT and WebVTT, the page only saves them -----------------
  function save(blob, name) {
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  downloadButtons.forEach((button) => {
    button.addEventListener("click", async () => {
      if (!last || busy) return;
      const format = button.dataset.format;
      const stem = last.source.name.replace(/\.[^.]*$/, "") || "transcript";
      const name = `${stem}.${format}`;
      downloadStatus.classList.remove("bad");
      if (last.files[format]) {
        save(last.files[format], name);
        return;
      }
      const request = last;
      const label = button.textContent;
      setBusy(true, null);
      button.textContent = `Preparing .${format}…`;
      downloadStatus.textContent = "";
      try {
        const body = transcriptionForm(request.source, request.model, request.language, format);
        const response = await api("/v1/audio/transcriptions", { method: "POST", body });
        const type = format === "srt" ? "application/x-subrip" : "text/vtt";
        const blob = new Blob([await response.text()], { type: `${type};charset=utf-8` });
        request.files[format] = blob;
        save(blob, name);
        downloadStatus.textContent = `Saved ${name}.`;
      } catch (error) {
        downloadStatus.textContent = `Could not make the .${format} file: ${error.message}`;
        downloadStatus.classList.add("bad");
      } finally {
        button.textContent = label;
        setBusy(false);
      }
    });
  });

  // ---- settings -----------------------------------------------------------------------------
  modelSelect.addEventListener("change", () => {
    session.set(MODEL_STORAGE, modelSelect.value);
    fillLanguages();
  });

  keyInput.value = session.get(KEY_STORAGE);
  keyInput.addEventListener("change", () => {
    session.set(KEY_STORAGE, keyInput.value.trim());
    loadModels();
  });

  const unavailable = recordingUnavailable();
  if (unavailable) {
    recordButton.disabled = true;
    recordStatus.textContent = unavailable;
  }

  setBusy(false);
  loadModels();
})();
