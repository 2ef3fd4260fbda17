// The Realtime transcription client's offline parts under node: the protocol it speaks (against
// a scripted socket standing in for the gateway, whose real end is tested in
// realtime.gateway.test.mjs), the resampler, pcm16 and base64 helpers.
import assert from "node:assert/strict";
import { test } from "node:test";

import { LinearResampler, RealtimeError, RealtimeTranscription, bytesToBase64, floatToPcm16, realtimeUrl } from "../dist/index.js";

/** A WebSocket whose server side is a script: reply(clientEvent) returns server events. */
function scriptedSocket(reply, sockets = []) {
  return class ScriptedSocket extends EventTarget {
    constructor(url, protocols) {
      super();
      this.url = url;
      this.protocols = protocols;
      this.readyState = 1;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => this.serve({ type: "transcription_session.created" }), 0);
    }
    serve(event) {
      const message = new Event("message");
      message.data = JSON.stringify(event);
      this.dispatchEvent(message);
    }
    send(text) {
      const event = JSON.parse(text);
      this.sent.push(event);
      setTimeout(() => { for (const e of reply(event, this)) this.serve(e); }, 0);
    }
    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      const close = new Event("close");
      close.code = code;
      close.reason = reason;
      this.dispatchEvent(close);
    }
  };
}

test("connect applies the session, events build the transcript, finish commits and closes", async () => {
  const sockets = [];
  const Socket = scriptedSocket((event) => {
    if (event.type === "transcription_session.update") return [{ type: "transcription_session.updated", session: event.session }];
    if (event.type === "input_audio_buffer.commit") {
      return [
        { type: "conversation.item.input_audio_transcription.delta", item_id: "item_2", delta: " world" },
        { type: "conversation.item.input_audio_transcription.completed", item_id: "item_2", transcript: "hello world" },
      ];
    }
    return [];
  }, sockets);
  const events = [];
  const live = await RealtimeTranscription.connect({
    baseUrl: "https://gw.example:8443", token: "jwt.a.b", silenceDurationMs: 400, WebSocket: Socket,
    onEvent: (e) => events.push(e),
  });
  const socket = sockets[0];
  assert.equal(socket.url, "wss://gw.example:8443/openai/v1/realtime?intent=transcription");
  assert.deepEqual(socket.protocols, ["realtime", "openai-beta.realtime-v1", "openai-insecure-api-key.jwt.a.b"]);
  assert.deepEqual(socket.sent[0], { type: "transcription_session.update", session: {
    input_audio_format: "pcm16", input_audio_transcription: { model: "whisper-1", language: "en" },
    turn_detection: { type: "server_vad", silence_duration_ms: 400, prefix_padding_ms: 300 } } });

  live.append(new Int16Array([1, -2]));
  assert.deepEqual(socket.sent[1], { type: "input_audio_buffer.append", audio: "AQD+/w==" });
  socket.serve({ type: "input_audio_buffer.speech_started", item_id: "item_1", audio_start_ms: 120 });
  socket.serve({ type: "conversation.item.input_audio_transcription.delta", item_id: "item_1", delta: "good" });
  socket.serve({ type: "conversation.item.input_audio_transcription.delta", item_id: "item_1", delta: " morning" });
  assert.equal(live.interim, "good morning");
  socket.serve({ type: "conversation.item.input_audio_transcription.completed", item_id: "item_1", transcript: "good morning" });
  socket.serve({ type: "input_audio_buffer.speech_started", item_id: "item_2", audio_start_ms: 2000 });
  socket.serve({ type: "conversation.item.input_audio_transcription.delta", item_id: "item_2", delta: "hello" });
  assert.equal(live.text, "good morning");
  assert.equal(live.interim, "hello");
  socket.serve({ type: "error", error: { code: "invalid_value", message: "nope", param: "x" } });

  const text = await live.finish(5000, 100);
  assert.equal(text, "good morning hello world");
  assert.equal(socket.sent.at(-1).type, "input_audio_buffer.commit");
  assert.equal(socket.readyState, 3);
  assert.deepEqual(events.map((e) => e.type), ["speech_started", "delta", "delta", "completed", "speech_started", "delta",
    "error", "delta", "completed", "closed"]);
  assert.deepEqual(events[2], { type: "delta", itemId: "item_1", delta: " morning", interim: "good morning" });
  assert.deepEqual(events[6], { type: "error", code: "invalid_value", message: "nope", param: "x" });
});

test("refusals reject connect with a RealtimeError", async () => {
  const refusing = scriptedSocket((event) => event.type === "transcription_session.update"
    ? [{ type: "error", error: { code: "unsupported_feature", message: "transcription language 'fr' (en is)", param: "session.input_audio_transcription.language" } }]
    : []);
  await assert.rejects(RealtimeTranscription.connect({ baseUrl: "http://h:1", apiKey: "amk_x", language: "fr", WebSocket: refusing }),
    (e) => e instanceof RealtimeError && e.code === "unsupported_feature" && e.param.endsWith("language"));

  class Refused extends EventTarget { // what a browser sees of a 401 at the handshake
    constructor() { super(); this.readyState = 0; setTimeout(() => { const c = new Event("close"); c.code = 1006; c.reason = ""; this.readyState = 3; this.dispatchEvent(c); }, 0); }
    close() {}
  }
  await assert.rejects(RealtimeTranscription.connect({ baseUrl: "http://h:1", apiKey: "amk_bad", WebSocket: Refused }),
    (e) => e instanceof RealtimeError && e.code === "connection_refused");
  await assert.rejects(RealtimeTranscription.connect({ baseUrl: "http://h:1", WebSocket: Refused }),
    (e) => e instanceof RealtimeError && e.code === "credentials_missing");
});

test("the resampler keeps its phase across blocks; pcm16 and base64 helpers", () => {
  const rate = 48_000;
  const tone = Float32Array.from({ length: rate }, (_, i) => Math.sin((2 * Math.PI * 440 * i) / rate));
  const whole = new LinearResampler(rate, 24_000).push(tone);
  const pieces = new LinearResampler(rate, 24_000);
  const parts = [];
  for (let i = 0; i < tone.length; i += 333) parts.push(...pieces.push(tone.subarray(i, i + 333)));
  assert.equal(whole.length, 24_000);
  assert.equal(parts.length, 24_000);
  for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(whole[i] - parts[i]) < 1e-6, `sample ${i}`);
  // 44.1 kHz -> 24 kHz: the same tone, sampled at the new rate.
  const odd = new LinearResampler(44_100, 24_000);
  const src = Float32Array.from({ length: 44_100 }, (_, i) => Math.sin((2 * Math.PI * 440 * i) / 44_100));
  const out = [];
  for (let i = 0; i < src.length; i += 128) out.push(...odd.push(src.subarray(i, i + 128)));
  assert.ok(Math.abs(out.length - 24_000) <= 1, String(out.length));
  for (let i = 0; i < out.length - 1; i += 97) assert.ok(Math.abs(out[i] - Math.sin((2 * Math.PI * 440 * i) / 24_000)) < 0.01, `sample ${i}`);

  assert.deepEqual([...floatToPcm16(Float32Array.from([0, 1, -1, 2, -0.5]))], [0, 32767, -32768, 32767, -16384]);
  assert.equal(bytesToBase64(new Uint8Array([104, 105])), "aGk=");
  const big = new Uint8Array(100_000).map((_, i) => i % 251);
  assert.deepEqual(new Uint8Array(Buffer.from(bytesToBase64(big), "base64")), big);
  assert.equal(realtimeUrl("http://127.0.0.1:8080", { intent: "transcription" }), "ws://127.0.0.1:8080/openai/v1/realtime?intent=transcription");
});
