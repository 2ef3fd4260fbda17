// The built SDK (dist/) under node against a real gateway: AIMESH_GATEWAY=http://host:port.
// Run by tests/integration/sdk/test_typescript_sdk.py (which starts the platform).
import assert from "node:assert/strict";
import { test } from "node:test";

import { AimeshError, Code, chat, createAimesh, paginate, requestId, wavToPcm, pcmToWav } from "../dist/index.js";

const baseUrl = process.env.AIMESH_GATEWAY;
if (!baseUrl) throw new Error("set AIMESH_GATEWAY=http://host:port");

const HANDBOOK = "# Office\n\nThe office opens at 8 am. Visitors sign in at the front desk.\n";

test("unary, server streams and typed errors through gRPC-Web", async () => {
  const aimesh = createAimesh({ baseUrl });
  const email = `ts-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  const pair = await aimesh.auth.signUp({
    email, password: "correct horse battery staple", organizationDisplayName: "TS Org", requestId: requestId(),
  });
  assert.match(pair.organization, /^organizations\//);
  aimesh.setToken(pair.accessToken);
  const me = await aimesh.auth.getCurrentUser({});
  assert.equal(me.email, email);

  const key = await aimesh.auth.createApiKey({ parent: pair.organization, apiKey: { displayName: "node" }, requestId: requestId() });
  assert.match(key.secret, /^amk_/);
  const client = createAimesh({ baseUrl, apiKey: key.secret });

  const doc = await client.knowledge.createDocument({
    document: { displayName: "office.md", mimeType: "text/markdown" },
    content: new TextEncoder().encode(HANDBOOK), requestId: requestId(),
  });
  let state = doc.state;
  for (let i = 0; i < 240 && state === 1; i++) {
    await new Promise((r) => setTimeout(r, 500));
    state = (await client.knowledge.getDocument({ name: doc.name })).state;
  }
  assert.equal(state, 2, "document did not become READY");
  const names = [];
  for await (const d of paginate(client.knowledge.listDocuments, { pageSize: 1 }, (r) => r.documents)) names.push(d.name);
  assert.deepEqual(names, [doc.name]);
  const hits = await client.knowledge.searchDocuments({ query: "when does the office open", topK: 3 });
  assert.equal(hits.results[0].document, doc.name);

  // Server streaming chat: deltas arrive, the answer is grounded and cited.
  const deltas = [];
  const reply = await chat(client, { content: "When does the office open?", documents: [doc.name], onDelta: (t) => deltas.push(t) });
  assert.ok(deltas.length >= 1, "no streamed deltas");
  assert.match(reply.text, /8 am/);
  assert.equal(reply.state, "complete");
  assert.ok(reply.citations.some((c) => c.document === doc.name), "no citation of the document");

  // Server streaming synthesis.
  let bytes = 0;
  for await (const chunk of client.speech.streamingSynthesize({
    text: "Hello from node.", audioConfig: { encoding: 1, sampleRateHertz: 16000 }, requestId: requestId(),
  })) bytes += chunk.audioContent.length;
  assert.ok(bytes > 16000, `only ${bytes} bytes of audio`);
  const wav = pcmToWav(new Uint8Array(3200), 16000);
  assert.equal(wavToPcm(wav).sampleRate, 16000);

  // Typed errors.
  await assert.rejects(client.knowledge.getDocument({ name: "documents/nope-nope" }), (e) =>
    e instanceof AimeshError && e.code === Code.NotFound);
  await assert.rejects(client.knowledge.searchDocuments({ query: "", topK: 1000 }), (e) => {
    assert.ok(e instanceof AimeshError);
    assert.equal(e.code, Code.InvalidArgument);
    const fields = e.fieldViolations.map((v) => v.field);
    assert.ok(fields.includes("query") && fields.includes("top_k"), JSON.stringify(fields));
    return true;
  });
  const bogus = createAimesh({ baseUrl, apiKey: "amk_bogus_0000000000" });
  await assert.rejects(bogus.knowledge.listDocuments({}), (e) => e instanceof AimeshError && e.code === Code.Unauthenticated && e.reason !== "");
  const speechOnly = await aimesh.auth.createApiKey({ parent: pair.organization, apiKey: { displayName: "speech", scopes: ["speech"] } });
  await assert.rejects(createAimesh({ baseUrl, apiKey: speechOnly.secret }).knowledge.listDocuments({}), (e) =>
    e instanceof AimeshError && e.code === Code.PermissionDenied && e.reason === "SCOPE_REQUIRED");
  // Errors inside a server stream are typed too (unknown model → NOT_FOUND before any event).
  await assert.rejects(chat(client, { content: "hi", model: "models/no-such-model" }), (e) =>
    e instanceof AimeshError && e.code === Code.NotFound);
});
