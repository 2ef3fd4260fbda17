// Live transcription through the real gateway's Realtime bridge under node: speech synthesized
// by the platform (24 kHz pcm16) is streamed like a microphone, interim deltas and the final
// transcript come back; a bad credential is refused. AIMESH_GATEWAY=http://host:port; node 20
// needs --experimental-websocket (tests/integration/sdk/test_typescript_sdk.py passes it).
import assert from "node:assert/strict";
import { test } from "node:test";

import { REALTIME_SAMPLE_RATE, RealtimeError, RealtimeTranscription, createAimesh, requestId } from "../dist/index.js";

const baseUrl = process.env.AIMESH_GATEWAY;
if (!baseUrl) throw new Error("set AIMESH_GATEWAY=http://host:port");

const SENTENCE = "the weather today is sunny with a high of seventy degrees";

function wordErrorRate(reference, hypothesis) {
  const ref = reference.split(/\s+/), hyp = hypothesis.toLowerCase().replace(/[.,!?]/g, " ").split(/\s+/).filter(Boolean);
  let row = Array.from({ length: hyp.length + 1 }, (_, j) => j);
  for (let i = 1; i <= ref.length; i++) {
    const next = [i];
    for (let j = 1; j <= hyp.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (ref[i - 1] === hyp[j - 1] ? 0 : 1));
    row = next;
  }
  return row[hyp.length] / ref.length;
}

test("live transcription over the Realtime WebSocket bridge", async () => {
  const aimesh = createAimesh({ baseUrl });
  const pair = await aimesh.auth.signUp({
    email: `rt-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`, password: "correct horse battery staple",
    organizationDisplayName: "RT Org", requestId: requestId(),
  });
  aimesh.setToken(pair.accessToken);
  const speech = await aimesh.speech.synthesize({
    text: SENTENCE, audioConfig: { encoding: 1, sampleRateHertz: REALTIME_SAMPLE_RATE }, requestId: requestId(),
  });
  const pcm = speech.audioContent;
  assert.ok(pcm.length > REALTIME_SAMPLE_RATE * 2, `only ${pcm.length} bytes of speech`);

  const events = [];
  const live = await RealtimeTranscription.connect({ baseUrl, token: pair.accessToken, onEvent: (e) => events.push(e) });
  const chunk = REALTIME_SAMPLE_RATE / 10 * 2; // 100 ms
  const audio = new Uint8Array(pcm.length + REALTIME_SAMPLE_RATE * 2 * 1.5); // then 1.5 s of silence
  audio.set(pcm);
  for (let i = 0; i < audio.length; i += chunk) {
    live.append(audio.subarray(i, i + chunk));
    await new Promise((r) => setTimeout(r, 50)); // twice real time, like a live source
  }
  for (let i = 0; i < 200 && !events.some((e) => e.type === "completed"); i++) await new Promise((r) => setTimeout(r, 100));
  const text = await live.finish();
  const kinds = events.map((e) => e.type);
  assert.ok(kinds.includes("speech_started"), kinds.join());
  assert.ok(kinds.includes("delta"), `no interim deltas: ${kinds.join()}`);
  assert.ok(kinds.indexOf("delta") < kinds.indexOf("completed"), kinds.join());
  assert.ok(wordErrorRate(SENTENCE, text) <= 0.35, text);
  assert.equal(kinds.at(-1), "closed");

  await assert.rejects(RealtimeTranscription.connect({ baseUrl, apiKey: "amk_not_a_real_key" }),
    (e) => e instanceof RealtimeError && e.code === "connection_refused");
});
