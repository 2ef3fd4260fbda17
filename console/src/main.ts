// The aimesh web console: a single page served by the gateway under /console/, calling the
// platform through the TypeScript SDK (gRPC-Web, same origin). Pages are hash routes.
import "./style.css";

import {
  AimeshError,
  Code,
  ConnectError,
  LinearResampler,
  REALTIME_SAMPLE_RATE,
  RealtimeError,
  RealtimeTranscription,
  chat,
  createAimesh,
  floatToPcm16,
  knowledge,
  paginate,
  requestId,
  speech,
  timestampDate,
  timestampFromDate,
  usage,
  wavToPcm,
  auth as authpb,
  billing as billingpb,
  type Aimesh,
  type ChatReply,
  type TranscriptionEvent,
} from "@aimesh/sdk";

// --- session --------------------------------------------------------------------------------

interface Session {
  token: string;
  refreshToken: string;
  expire: number; // epoch seconds of the access token's expiry
  organization: string;
  email: string;
}

const SESSION_KEY = "aimesh.console.session";
const api: Aimesh = createAimesh({ baseUrl: location.origin });
let session: Session | null = loadSession();

function loadSession(): Session | null {
  try {
    const value = JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null") as Session | null;
    if (value) api.setToken(value.token);
    return value;
  } catch {
    return null;
  }
}

function saveSession(pair: { accessToken: string; refreshToken: string; organization: string; expireTime?: { seconds: bigint } }, email: string): void {
  session = {
    token: pair.accessToken, refreshToken: pair.refreshToken, organization: pair.organization,
    expire: Number(pair.expireTime?.seconds ?? 0n), email,
  };
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  api.setToken(session.token);
}

function signOut(): void {
  session = null;
  localStorage.removeItem(SESSION_KEY);
  api.setToken(undefined);
  location.hash = "#/signin";
}

/** Access tokens last 15 minutes: trade the refresh token before one runs out. */
async function freshToken(): Promise<void> {
  if (!session || session.expire - 30 > Date.now() / 1000) return;
  try {
    const pair = await api.auth.refreshToken({ refreshToken: session.refreshToken, requestId: requestId() });
    saveSession(pair, session.email);
  } catch {
    signOut();
  }
}

// --- DOM helpers ----------------------------------------------------------------------------

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(key.replace(/^on/, ""), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function field(label: string, input: HTMLElement, hint?: string): HTMLElement {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("small", {}, hint) : null);
}

function toast(message: string, kind: "error" | "info" = "info"): void {
  const el = document.getElementById("toast")!;
  el.textContent = message;
  el.className = `toast ${kind}`;
  el.hidden = false;
  window.clearTimeout((el as unknown as { timer?: number }).timer);
  (el as unknown as { timer?: number }).timer = window.setTimeout(() => (el.hidden = true), 8000);
}

function describe(error: unknown): string {
  const e = AimeshError.from(error);
  const hint = e.hint;
  return `${e.reason}: ${e.rawMessage}${hint ? ` — ${hint}` : ""}`;
}

/** Run an action from a button or form; failures become a visible, explained message. */
async function act(button: HTMLButtonElement | null, action: () => Promise<void>): Promise<void> {
  if (button) button.disabled = true;
  try {
    await freshToken();
    await action();
  } catch (error) {
    const e = AimeshError.from(error);
    if (e.reason === "TOKEN_EXPIRED" || e.reason === "CREDENTIALS_MISSING") signOut();
    toast(describe(error), "error");
  } finally {
    if (button) button.disabled = false;
  }
}

function when(ts?: Parameters<typeof timestampDate>[0]): string {
  return ts && ts.seconds ? timestampDate(ts).toISOString().replace("T", " ").slice(0, 16) : "–";
}

function badge(text: string, kind: string): HTMLElement {
  return h("span", { class: `badge ${kind}` }, text);
}

function table(headers: string[], rows: Child[][], caption: string): HTMLElement {
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ...headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, ...(rows.length ? rows.map((r) => h("tr", {}, ...r.map((c) => h("td", {}, c))))
      : [h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, "Nothing yet."))])));
}

function mimeOf(name: string): string {
  const ext = name.toLowerCase().split(".").pop();
  return ({ md: "text/markdown", markdown: "text/markdown", html: "text/html", htm: "text/html", pdf: "application/pdf" } as Record<string, string>)[ext ?? ""] ?? "text/plain";
}

// --- pages ----------------------------------------------------------------------------------

type Page = (main: HTMLElement) => Promise<void> | void;

function signInPage(main: HTMLElement): void {
  const signUp = h("form", { class: "card", "aria-labelledby": "signup-title" },
    h("h2", { id: "signup-title" }, "Create an account"),
    field("E-mail", h("input", { type: "email", name: "email", required: true, autocomplete: "email" })),
    field("Password", h("input", { type: "password", name: "password", required: true, minlength: 12, autocomplete: "new-password" }), "At least 12 characters."),
    field("Organization", h("input", { type: "text", name: "organization", required: true, autocomplete: "organization" })),
    h("button", { type: "submit" }, "Sign up"));
  const logIn = h("form", { class: "card", "aria-labelledby": "login-title" },
    h("h2", { id: "login-title" }, "Log in"),
    field("E-mail", h("input", { type: "email", name: "email", required: true, autocomplete: "email" })),
    field("Password", h("input", { type: "password", name: "password", required: true, autocomplete: "current-password" })),
    h("button", { type: "submit" }, "Log in"));
  signUp.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(signUp);
    void act(signUp.querySelector("button"), async () => {
      const email = String(data.get("email"));
      const pair = await api.auth.signUp({
        email, password: String(data.get("password")),
        organizationDisplayName: String(data.get("organization")), requestId: requestId(),
      });
      saveSession(pair, email);
      location.hash = "#/documents";
    });
  });
  logIn.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(logIn);
    void act(logIn.querySelector("button"), async () => {
      const email = String(data.get("email"));
      const pair = await api.auth.login({ email, password: String(data.get("password")), requestId: requestId() });
      saveSession(pair, email);
      location.hash = "#/documents";
    });
  });
  main.append(h("h1", {}, "Welcome to aimesh"), h("div", { class: "grid two" }, signUp, logIn));
}

async function keysPage(main: HTMLElement): Promise<void> {
  const org = session!.organization;
  const list = h("div", {});
  const secretBox = h("div", { class: "secret", hidden: true, role: "alert" });
  const scopes = ["inference", "knowledge.read", "knowledge.write", "speech", "usage.read"];
  const form = h("form", { class: "card inline", "aria-labelledby": "newkey-title" },
    h("h2", { id: "newkey-title" }, "New API key"),
    field("Name", h("input", { name: "name", required: true, maxlength: 100 })),
    h("fieldset", {}, h("legend", {}, "Scopes (none = everything a member may do)"),
      ...scopes.map((s) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "scope", value: s }), s))),
    h("button", { type: "submit" }, "Create key"));
  const refresh = async () => {
    const keys = [];
    for await (const k of paginate(api.auth.listApiKeys, { parent: org, showInactive: true }, (r) => r.apiKeys)) keys.push(k);
    list.replaceChildren(table(["Name", "Prefix", "State", "Scopes", "Created", ""], keys.map((k) => [
      k.displayName, h("code", {}, k.prefix),
      badge(authpb.ApiKey_State[k.state], k.state === authpb.ApiKey_State.ACTIVE ? "ok" : "muted"),
      k.scopes.join(", ") || "all", when(k.createTime),
      k.state === authpb.ApiKey_State.ACTIVE
        ? h("button", { class: "danger", "aria-label": `Revoke ${k.displayName}`, onclick: (ev: Event) => {
            if (!confirm(`Revoke "${k.displayName}"? Requests using it will fail.`)) return;
            void act(ev.currentTarget as HTMLButtonElement, async () => {
              await api.auth.revokeApiKey({ name: k.name });
              toast(`Revoked ${k.displayName}`);
              await refresh();
            });
          } }, "Revoke")
        : "",
    ]), "API keys of your organization"));
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    void act(form.querySelector("button"), async () => {
      const key = await api.auth.createApiKey({
        parent: org, requestId: requestId(),
        apiKey: { displayName: String(data.get("name")), scopes: data.getAll("scope").map(String) },
      });
      secretBox.hidden = false;
      const code = h("code", { id: "new-secret" }, key.secret);
      secretBox.replaceChildren(h("strong", {}, "Copy this secret now — it is shown only once: "), code,
        h("button", { type: "button", onclick: () => void navigator.clipboard?.writeText(key.secret) }, "Copy"));
      form.reset();
      await refresh();
    });
  });
  main.append(h("h1", {}, "API keys"), form, secretBox, list);
  await refresh();
}

const STATE_KIND: Record<number, string> = { 1: "busy", 2: "ok", 3: "bad" };

async function documentsPage(main: HTMLElement): Promise<void> {
  const list = h("div", {});
  const progress = h("progress", { max: 100, value: 0, "aria-label": "Upload progress", hidden: true });
  const progressText = h("span", { "aria-live": "polite" });
  const input = h("input", { type: "file", id: "file-input", accept: ".txt,.md,.markdown,.html,.htm,.pdf" }) as HTMLInputElement;
  const drop = h("div", { class: "drop", tabindex: 0, role: "button", "aria-describedby": "drop-help" },
    h("p", {}, "Drag a file here, or "), h("label", { for: "file-input", class: "linklike" }, "choose a file"),
    h("p", { id: "drop-help" }, h("small", {}, "Text, Markdown, HTML or PDF up to 8 MiB.")));
  drop.append(input);
  let timer = 0;
  const refresh = async () => {
    const docs = [];
    for await (const d of paginate(api.knowledge.listDocuments, {}, (r) => r.documents)) docs.push(d);
    list.replaceChildren(table(["Name", "State", "Chunks", "Size", "Created", ""], docs.map((d) => [
      d.displayName,
      h("span", {}, badge(knowledge.Document_State[d.state], STATE_KIND[d.state] ?? "muted"),
        d.failureReason ? h("small", { class: "reason" }, ` ${d.failureReason}`) : null),
      d.chunkCount, `${(Number(d.sizeBytes) / 1024).toFixed(1)} KiB`, when(d.createTime),
      h("button", { class: "danger", "aria-label": `Delete ${d.displayName}`, onclick: (ev: Event) => {
        if (!confirm(`Delete "${d.displayName}"?`)) return;
        void act(ev.currentTarget as HTMLButtonElement, async () => {
          await api.knowledge.deleteDocument({ name: d.name });
          await refresh();
        });
      } }, "Delete"),
    ]), "Your documents (processing state updates live)"));
    // Live state: poll while anything is still processing.
    window.clearTimeout(timer);
    if (docs.some((d) => d.state === knowledge.Document_State.PROCESSING) && main.isConnected) {
      timer = window.setTimeout(() => void refresh().catch(() => undefined), 1000);
    } else if (progressText.textContent?.endsWith("processing…")) {
      progressText.textContent = "All documents processed.";
    }
  };
  const upload = (file: File) => act(null, async () => {
    if (file.size > 8 * 1024 * 1024) throw new AimeshError(new ConnectError(`${file.name} is over 8 MiB`, Code.InvalidArgument));
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = `Uploading ${file.name}…`;
    await uploadWithProgress(file, (sent, total) => {
      progress.value = Math.round((100 * sent) / total);
      progressText.textContent = `Uploading ${file.name}: ${progress.value}%`;
    });
    progressText.textContent = `Uploaded ${file.name}; processing…`;
    await refresh();
  });
  input.addEventListener("change", () => input.files?.[0] && void upload(input.files[0]));
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); input.click(); } });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const file = ev.dataTransfer?.files[0];
    if (file) void upload(file);
  });

  const results = h("div", { id: "search-results", "aria-live": "polite" });
  const search = h("form", { class: "card inline", role: "search" },
    field("Search your documents", h("input", { type: "search", name: "q", required: true, maxlength: 2048 })),
    h("button", { type: "submit" }, "Search"));
  search.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const query = String(new FormData(search).get("q"));
    void act(search.querySelector("button"), async () => {
      const reply = await api.knowledge.searchDocuments({ query, topK: 5 });
      results.replaceChildren(...(reply.results.length ? reply.results.map((r, i) => h("article", { class: "hit" },
        h("h3", {}, `[${i + 1}] ${r.documentDisplayName}`),
        h("p", { class: "cite" }, `${r.document} · chunk ${r.chunkIndex}${r.headingPath.length ? " · " + r.headingPath.join(" › ") : ""} · score ${r.score.toFixed(3)}`),
        highlight(r.text, query))) : [h("p", {}, "No matches.")]));
    });
  });
  main.append(h("h1", {}, "Documents"), h("section", { class: "card" }, h("h2", {}, "Upload"), drop, progress, progressText),
    search, results, list);
  await refresh();
}

/** JSON upload through the gateway with XMLHttpRequest: its upload events give real progress. */
function uploadWithProgress(file: File, onProgress: (sent: number, total: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onerror = () => reject(reader.error);
    reader.onload = () => {
      const content = String(reader.result).split(",", 2)[1] ?? "";
      const body = JSON.stringify({ document: { displayName: file.name, mimeType: mimeOf(file.name) }, content, requestId: requestId() });
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/documents");
      xhr.setRequestHeader("content-type", "application/json");
      xhr.setRequestHeader("authorization", `Bearer ${session!.token}`);
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
      xhr.onerror = () => reject(new Error("network error during upload"));
      xhr.onload = () => {
        if (xhr.status === 200) { onProgress(1, 1); resolve(); return; }
        let message = `HTTP ${xhr.status}`;
        try {
          const status = JSON.parse(xhr.responseText) as { message?: string };
          message = status.message ?? message;
        } catch { /* not JSON */ }
        reject(new Error(message));
      };
      xhr.send(body);
    };
    reader.readAsDataURL(file);
  });
}

function highlight(text: string, query: string): HTMLElement {
  const words = query.toLowerCase().split(/\W+/).filter((w) => w.length > 2);
  const p = h("p", { class: "passage" });
  if (!words.length) { p.textContent = text; return p; }
  const pattern = new RegExp(`(${words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`, "gi");
  for (const part of text.split(pattern)) p.append(pattern.test(part) ? h("mark", {}, part) : part);
  return p;
}

async function chatPage(main: HTMLElement): Promise<void> {
  const conversations = h("ul", { class: "convs", "aria-label": "Conversations" });
  const log = h("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": "Messages" });
  const models = h("select", { name: "model" }) as HTMLSelectElement;
  const dialog = h("dialog", { "aria-labelledby": "cite-title" });
  let current = "";
  const listModels = await api.orchestrator.listModels({});
  models.append(h("option", { value: "" }, "Platform default"), ...listModels.models.map((m) => h("option", { value: m.name }, m.displayName || m.name)));
  const showCitation = (c: { documentDisplayName: string; document: string; quote: string; chunkId: string }) => {
    dialog.replaceChildren(h("h2", { id: "cite-title" }, c.documentDisplayName),
      h("p", { class: "cite" }, `${c.document} · ${c.chunkId}`), h("blockquote", {}, c.quote),
      h("form", { method: "dialog" }, h("button", { type: "submit" }, "Close")));
    dialog.showModal();
  };
  const bubble = (role: string, text: string) => {
    const body = h("div", { class: "text" }, text);
    const el = h("article", { class: `msg ${role}` }, h("h3", { class: "sr-only" }, role === "user" ? "You" : "Assistant"), body);
    log.append(el);
    return { el, body };
  };
  const renderReply = (el: HTMLElement, reply: ChatReply) => {
    const cites = h("ol", { class: "citations", "aria-label": "Citations" }, ...reply.citations.map((c, i) =>
      h("li", {}, h("button", { type: "button", class: "linklike", onclick: () => showCitation(c) }, `[${i + 1}] ${c.documentDisplayName}`))));
    const stateKind = reply.state === "complete" ? "ok" : reply.state === "incomplete" ? "busy" : "bad";
    el.append(h("footer", {}, badge(reply.state, stateKind), reply.model ? h("small", {}, ` ${reply.model}`) : null,
      reply.error ? h("p", { class: "error" }, `${reply.error.reason}: ${reply.error.rawMessage}`) : null), cites);
  };
  const loadConversations = async () => {
    const list = await api.conversation.listConversations({ pageSize: 50 });
    conversations.replaceChildren(h("li", {}, h("button", { type: "button", onclick: () => { current = ""; log.replaceChildren(); } }, "+ New conversation")),
      ...list.conversations.map((c) => h("li", {}, h("button", { type: "button", "aria-current": c.name === current ? "true" : undefined,
        onclick: () => void act(null, () => openConversation(c.name)) }, c.title || c.name))));
  };
  const openConversation = async (name: string) => {
    current = name;
    log.replaceChildren();
    const messages = await api.conversation.listMessages({ parent: name, pageSize: 200 });
    for (const m of messages.messages) {
      const { el } = bubble(m.role === 1 ? "user" : "assistant", m.content);
      if (m.role === 2) {
        renderReply(el, { conversation: name, text: m.content, citations: m.citations, model: m.model,
          state: m.state === 1 ? "complete" : m.state === 2 ? "incomplete" : "failed",
          error: m.error && m.error.code ? AimeshError.from(new Error(m.error.message)) : undefined });
      }
    }
    await loadConversations();
  };
  const form = h("form", { class: "composer" },
    field("Message", h("textarea", { name: "content", required: true, rows: 3, maxlength: 32000 })),
    h("div", { class: "row" }, field("Model", models),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "grounded", checked: true }), "Answer from my documents"),
      h("button", { type: "submit" }, "Send")));
  const textarea = form.querySelector("textarea")!;
  textarea.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const content = String(data.get("content"));
    void act(form.querySelector("button[type=submit]"), async () => {
      bubble("user", content);
      const { el, body } = bubble("assistant", "");
      body.classList.add("streaming");
      form.reset();
      try {
        const reply = await chat(api, {
          content, conversation: current || undefined, model: String(data.get("model") || ""),
          grounded: data.get("grounded") === "on", onDelta: (t) => body.append(t),
        });
        current = reply.conversation;
        body.textContent = reply.text;
        renderReply(el, reply);
      } catch (error) {
        el.append(h("footer", {}, badge("failed", "bad"), h("p", { class: "error" }, describe(error))));
        throw error;
      } finally {
        body.classList.remove("streaming");
      }
      await loadConversations();
    });
  });
  main.append(h("h1", {}, "Chat"), h("div", { class: "chat" }, h("aside", {}, h("h2", {}, "Conversations"), conversations),
    h("section", { class: "thread", "aria-label": "Conversation" }, log, form)), dialog);
  await loadConversations();
}

// --- live microphone transcription (the Realtime WebSocket bridge) ---------------------------

// The microphone is tapped by an AudioWorklet (inline module: the console ships as three fixed
// files) that hands each 128-frame block to the page, which resamples to the bridge's 24 kHz
// pcm16 and sends ~100 ms at a time.
const MIC_TAP = `registerProcessor("aimesh-mic-tap", class extends AudioWorkletProcessor {
  process(inputs) { const channel = inputs[0] && inputs[0][0]; if (channel) this.port.postMessage(channel.slice(0)); return true; }
});`;

interface MicCapture {
  stop(): Promise<void>;
}

async function captureMicrophone(onPcm: (pcm: Int16Array) => void): Promise<MicCapture> {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
  const context = new AudioContext();
  try {
    const module = URL.createObjectURL(new Blob([MIC_TAP], { type: "text/javascript" }));
    await context.audioWorklet.addModule(module);
    URL.revokeObjectURL(module);
    const source = context.createMediaStreamSource(stream);
    const tap = new AudioWorkletNode(context, "aimesh-mic-tap");
    const mute = context.createGain(); // keeps the graph pulled without playing the microphone back
    mute.gain.value = 0;
    source.connect(tap).connect(mute).connect(context.destination);
    const resampler = new LinearResampler(context.sampleRate, REALTIME_SAMPLE_RATE);
    let pending: Float32Array[] = [];
    let size = 0;
    const flush = () => {
      if (!size) return;
      const block = new Float32Array(size);
      let at = 0;
      for (const part of pending) { block.set(part, at); at += part.length; }
      pending = [];
      size = 0;
      onPcm(floatToPcm16(block));
    };
    tap.port.onmessage = (event: MessageEvent<Float32Array>) => {
      const out = resampler.push(event.data);
      pending.push(out);
      size += out.length;
      if (size >= REALTIME_SAMPLE_RATE / 10) flush();
    };
    return {
      async stop() {
        tap.port.onmessage = null;
        flush();
        source.disconnect();
        tap.disconnect();
        stream.getTracks().forEach((t) => t.stop());
        await context.close();
      },
    };
  } catch (error) {
    stream.getTracks().forEach((t) => t.stop());
    await context.close();
    throw error;
  }
}

function describeLiveError(error: unknown): string {
  const name = (error as { name?: string }).name;
  if (name === "NotAllowedError") return "Microphone access was denied: allow it in the browser's site settings.";
  if (name === "NotFoundError") return "No microphone was found.";
  if (error instanceof RealtimeError) return `Live transcription failed: ${error.message} (${error.code})`;
  return `Live transcription failed: ${(error as Error).message ?? String(error)}`;
}

/** Start/stop live transcription: interim words as they are recognized, then each final. */
function liveTranscription(): HTMLElement {
  const button = h("button", { type: "button", id: "live" }, "Start live transcription") as HTMLButtonElement;
  const status = h("p", { id: "live-status", class: "muted", role: "status" }, "Speak into your microphone; words appear as they are recognized.");
  const alert = h("p", { id: "live-error", class: "error", role: "alert" });
  const finals = h("span", { id: "live-final" });
  const interim = h("span", { id: "live-interim", class: "interim" });
  const output = h("output", { id: "live-transcript", "aria-live": "polite", "data-interims": "0" }, finals, " ", interim);
  let live: RealtimeTranscription | null = null;
  let capture: MicCapture | null = null;
  let interims = 0;

  const show = (event: TranscriptionEvent) => {
    if (!live) return;
    if (event.type === "delta") output.dataset.interims = String(++interims);
    if (event.type === "speech_started") status.textContent = "Hearing speech…";
    if (event.type === "speech_stopped") status.textContent = "Listening…";
    if (event.type === "error") alert.textContent = `${event.code}: ${event.message}`;
    finals.textContent = live.text;
    interim.textContent = live.interim;
    if (event.type === "closed" && capture) {
      alert.textContent = `The connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""}).`;
      void stop();
    }
  };
  const stop = async () => {
    button.disabled = true;
    status.textContent = "Finishing the last words…";
    const [mic, transcription] = [capture, live];
    capture = null;
    try {
      await mic?.stop();
      await transcription?.finish();
      finals.textContent = transcription?.text ?? "";
      interim.textContent = "";
      status.textContent = transcription?.text ? "Stopped." : "Stopped: no speech was recognized.";
    } finally {
      live = null;
      button.textContent = "Start live transcription";
      button.disabled = false;
    }
  };
  const start = async () => {
    button.disabled = true;
    alert.textContent = "";
    finals.textContent = interim.textContent = "";
    output.dataset.interims = String((interims = 0));
    status.textContent = "Connecting…";
    try {
      await freshToken();
      live = await RealtimeTranscription.connect({ baseUrl: location.origin, token: session?.token, onEvent: show });
      capture = await captureMicrophone((pcm) => live?.append(pcm));
      status.textContent = "Listening… speak now.";
      button.textContent = "Stop";
    } catch (error) {
      live?.close();
      live = null;
      status.textContent = "Not listening.";
      alert.textContent = describeLiveError(error);
      toast(alert.textContent, "error");
      button.textContent = "Start live transcription";
    } finally {
      button.disabled = false;
    }
  };
  button.addEventListener("click", () => void (capture ? stop() : start()));
  return h("div", { class: "live" }, h("h3", {}, "Live from your microphone"), button, status, alert, output);
}

async function speechPage(main: HTMLElement): Promise<void> {
  const voices = await api.speech.listVoices({});
  const voice = h("select", { name: "voice" }, h("option", { value: "" }, "Default voice"),
    ...voices.voices.map((v) => h("option", { value: v.name }, `${v.displayName} (${v.languageCodes.join(", ")})`))) as HTMLSelectElement;
  const player = h("audio", { controls: true, id: "tts-audio" }) as HTMLAudioElement;
  const speak = h("form", { class: "card" }, h("h2", {}, "Text to speech"),
    field("Text", h("textarea", { name: "text", required: true, rows: 3, maxlength: 5000 })), field("Voice", voice),
    h("button", { type: "submit" }, "Speak"), player);
  speak.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(speak);
    void act(speak.querySelector("button"), async () => {
      const reply = await api.speech.synthesize({
        text: String(data.get("text")), voice: String(data.get("voice") || ""), requestId: requestId(),
        audioConfig: { encoding: speech.AudioEncoding.WAV, sampleRateHertz: 22050 },
      });
      player.src = URL.createObjectURL(new Blob([reply.audioContent.slice()], { type: "audio/wav" }));
      player.dataset.bytes = String(reply.audioContent.length);
      await player.play().catch(() => undefined); // autoplay may be refused: the controls remain
    });
  });

  const transcript = h("output", { id: "transcript", "aria-live": "polite" });
  const showResult = (reply: { results: { alternatives: { transcript: string }[] }[] }) => {
    const text = reply.results.map((r) => r.alternatives[0]?.transcript ?? "").join(" ").trim();
    transcript.textContent = text || "(no speech recognized)";
  };
  const recognize = (pcm: Uint8Array, sampleRate: number) => api.speech.recognize({
    config: { encoding: speech.AudioEncoding.LINEAR16, sampleRateHertz: sampleRate, languageCode: "en-US" },
    content: pcm, requestId: requestId(),
  });
  const fileInput = h("input", { type: "file", accept: ".wav,audio/wav", name: "wav" }) as HTMLInputElement;
  fileInput.addEventListener("change", () => {
    const file = fileInput.files?.[0];
    if (!file) return;
    void act(null, async () => {
      transcript.textContent = "Transcribing…";
      const { pcm, sampleRate } = wavToPcm(new Uint8Array(await file.arrayBuffer()));
      showResult(await recognize(pcm, sampleRate));
    });
  });
  const listen = h("section", { class: "card" }, h("h2", {}, "Speech to text"),
    field("Transcribe a WAV file (mono, 16-bit)", fileInput), h("h3", {}, "Transcript"), transcript, liveTranscription());
  main.append(h("h1", {}, "Speech"), h("div", { class: "grid two" }, speak, listen));
}

function barChart(title: string, points: { label: string; value: number }[]): HTMLElement {
  const max = Math.max(1, ...points.map((p) => p.value));
  const width = 420;
  const slot = points.length ? Math.min(60, Math.floor(width / points.length)) : 0;
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} 180`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${points.map((p) => `${p.label} ${p.value}`).join(", ") || "no data"}`);
  const text = (x: number, y: number, content: string, cls: string) => {
    const t = document.createElementNS(svgNs, "text");
    t.setAttribute("x", String(x));
    t.setAttribute("y", String(y));
    t.setAttribute("class", cls);
    t.setAttribute("text-anchor", "middle");
    t.textContent = content;
    svg.append(t);
  };
  const axis = document.createElementNS(svgNs, "line");
  Object.entries({ x1: "0", x2: String(width), y1: "150", y2: "150", class: "axis" }).forEach(([k, v]) => axis.setAttribute(k, v));
  svg.append(axis);
  points.forEach((p, i) => {
    const hgt = Math.max(1, Math.round((120 * p.value) / max));
    const x = i * slot + 8;
    const rect = document.createElementNS(svgNs, "rect");
    Object.entries({ x: String(x), y: String(150 - hgt), width: String(slot - 16), height: String(hgt), class: "bar" })
      .forEach(([k, v]) => rect.setAttribute(k, v));
    const tip = document.createElementNS(svgNs, "title");
    tip.textContent = `${p.label}: ${p.value}`;
    rect.append(tip);
    svg.append(rect);
    text(x + (slot - 16) / 2, 145 - hgt, p.value.toLocaleString(), "value");
    text(x + (slot - 16) / 2, 168, p.label.slice(5), "label");
  });
  return h("figure", { class: "chart" }, svg, h("figcaption", {}, title));
}

async function usagePage(main: HTMLElement): Promise<void> {
  const now = new Date();
  const start = new Date(now.getTime() - 30 * 86400_000);
  const G = usage.GetUsageSummaryRequest_GroupBy;
  const summarize = (groupBy: number[]) => api.usage.getUsageSummary({
    startTime: timestampFromDate(start), endTime: timestampFromDate(new Date(now.getTime() + 60_000)), groupBy,
  });
  const [byDay, byModel] = await Promise.all([summarize([G.RESOURCE_TYPE, G.DAY]), summarize([G.RESOURCE_TYPE, G.MODEL])]);
  const kind = (t: number) => usage.ResourceType[t].toLowerCase().replace(/_/g, " ");
  const amount = (micros: bigint) => Number(micros) / 1e6;
  const charts = h("div", { class: "grid charts" });
  const types = [...new Set(byDay.rows.map((r) => r.resourceType))];
  for (const t of types) {
    charts.append(barChart(`${kind(t)} per day`, byDay.rows.filter((r) => r.resourceType === t).map((r) => ({
      label: r.day ? `${r.day.year}-${String(r.day.month).padStart(2, "0")}-${String(r.day.day).padStart(2, "0")}` : "?",
      value: amount(r.quantityMicros),
    }))));
  }
  const models = table(["Resource", "Model", "Quantity", "Records"], byModel.rows.map((r) => [kind(r.resourceType), r.model || "–",
    amount(r.quantityMicros).toLocaleString(), String(r.recordCount)]), "Usage per model, last 30 days");

  const budgets = h("div", {});
  const loadBudgets = async () => {
    const list = await api.usage.listBudgets({});
    budgets.replaceChildren(table(["Name", "Limit", "Spent", "Token limit", "Tokens used"], list.budgets.map((b) => [
      b.displayName || b.name, b.monthlyLimitMicros ? `${amount(b.monthlyLimitMicros)} ${b.currencyCode}` : "–",
      b.monthlyLimitMicros ? `${amount(b.spentMicros)} ${b.currencyCode}` : "–",
      b.monthlyTokenLimit ? String(b.monthlyTokenLimit) : "–", String(b.usedTokens ?? "–"),
    ]), "Monthly budgets"));
  };
  const budgetForm = h("form", { class: "card inline" }, h("h2", {}, "New budget"),
    field("Name", h("input", { name: "name", maxlength: 100 })),
    field("Monthly limit (USD)", h("input", { name: "amount", type: "number", min: 0, step: "0.01" })),
    field("Monthly token limit", h("input", { name: "tokens", type: "number", min: 0, step: 1 })),
    h("button", { type: "submit" }, "Create budget"));
  budgetForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(budgetForm);
    void act(budgetForm.querySelector("button"), async () => {
      const dollars = Number(data.get("amount") || 0);
      await api.usage.createBudget({ requestId: requestId(), budget: {
        displayName: String(data.get("name") || ""), scope: usage.Budget_Scope.ORGANIZATION,
        monthlyLimitMicros: BigInt(Math.round(dollars * 1e6)), currencyCode: dollars ? "USD" : "",
        monthlyTokenLimit: BigInt(Number(data.get("tokens") || 0)),
      } });
      budgetForm.reset();
      await loadBudgets();
    });
  });
  const invoices = await api.billing.listInvoices({});
  main.append(h("h1", {}, "Usage and billing"), h("section", { "aria-label": "Usage charts" }, h("h2", {}, "Last 30 days"),
    types.length ? charts : h("p", { id: "no-usage" }, "No usage yet."), models),
  h("section", {}, h("h2", {}, "Budgets"), budgetForm, budgets),
  h("section", {}, h("h2", {}, "Invoices"), table(["Number", "State", "Period", "Total"], invoices.invoices.map((i) => [
    i.number || i.name, billingpb.Invoice_State[i.state], `${when(i.periodStartTime).slice(0, 10)} – ${when(i.periodEndTime).slice(0, 10)}`,
    `${amount(i.totalMicros).toFixed(2)} ${i.currencyCode}`]), "Invoices")));
  await loadBudgets();
}

interface OpenApiOperation { operationId: string; summary: string; description: string; tags: string[];
  parameters?: { name: string; in: string; required?: boolean; description?: string }[]; security?: unknown[] }

async function apiPage(main: HTMLElement): Promise<void> {
  const response = await fetch("/v1/openapi.json");
  if (!response.ok) throw new Error(`GET /v1/openapi.json answered ${response.status}`);
  const doc = await response.json() as { info: { title: string; version: string; description: string };
    tags: { name: string; description: string }[]; paths: Record<string, Record<string, OpenApiOperation>> };
  main.append(h("h1", {}, `${doc.info.title} reference (${doc.info.version})`), h("p", {}, doc.info.description),
    h("p", {}, h("a", { href: "/v1/openapi.json" }, "OpenAPI 3.1 document (JSON)")));
  for (const tag of doc.tags) {
    const ops = Object.entries(doc.paths).flatMap(([path, verbs]) => Object.entries(verbs)
      .filter(([, op]) => op.tags.includes(tag.name)).map(([verb, op]) => ({ path, verb, op })));
    main.append(h("section", { class: "api" }, h("h2", { id: tag.name }, tag.name), h("p", { class: "muted" }, tag.description.split("\n\n")[0]),
      ...ops.map(({ path, verb, op }) => h("details", {},
        h("summary", {}, h("span", { class: `verb ${verb}` }, verb.toUpperCase()), " ", h("code", {}, path), " — ", op.summary),
        h("pre", { class: "doc" }, op.description),
        op.parameters?.length ? table(["Parameter", "In", "Required", "Description"], op.parameters.map((p) => [
          h("code", {}, p.name), p.in, p.required ? "yes" : "no", p.description ?? ""]), "Parameters") : null,
        h("p", {}, op.security && op.security.length === 0 ? "Public: no credentials needed." : "Needs a bearer token or an API key.")))));
  }
}

// --- router ---------------------------------------------------------------------------------

const PAGES: { path: string; title: string; page: Page; auth: boolean }[] = [
  { path: "documents", title: "Documents", page: documentsPage, auth: true },
  { path: "chat", title: "Chat", page: chatPage, auth: true },
  { path: "speech", title: "Speech", page: speechPage, auth: true },
  { path: "keys", title: "API keys", page: keysPage, auth: true },
  { path: "usage", title: "Usage", page: usagePage, auth: true },
  { path: "api", title: "API reference", page: apiPage, auth: false },
  { path: "signin", title: "Sign in", page: signInPage, auth: false },
];

async function route(): Promise<void> {
  const name = location.hash.replace(/^#\/?/, "") || (session ? "documents" : "signin");
  let page = PAGES.find((p) => p.path === name) ?? PAGES[0];
  if (page.auth && !session) page = PAGES.find((p) => p.path === "signin")!;
  const nav = document.getElementById("nav")!;
  nav.replaceChildren(h("ul", {}, ...PAGES.filter((p) => session ? p.path !== "signin" : !p.auth).map((p) =>
    h("li", {}, h("a", { href: `#/${p.path}`, "aria-current": p.path === page.path ? "page" : undefined }, p.title)))));
  const who = document.getElementById("who")!;
  who.replaceChildren(session ? h("span", {}, `${session.email} `, h("button", { type: "button", class: "linklike", onclick: signOut }, "Sign out")) : "");
  const main = document.getElementById("main")!;
  main.replaceChildren();
  delete main.dataset.ready;
  main.dataset.page = page.path;
  document.title = `${page.title} · aimesh console`;
  await act(null, async () => {
    await page.page(main);
  });
  main.dataset.ready = "true";
}

window.addEventListener("hashchange", () => void route());
void route();
