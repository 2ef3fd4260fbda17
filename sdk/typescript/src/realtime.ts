/**
 * Live transcription over the gateway's OpenAI Realtime WebSocket bridge
 * (`GET /openai/v1/realtime?intent=transcription`), in browsers and in node.
 *
 *   const live = await RealtimeTranscription.connect({ baseUrl: "", token, onEvent: show });
 *   live.append(pcm16At24kHz);           // as audio arrives (see LinearResampler, floatToPcm16)
 *   await live.finish();                 // last utterance finalized, then closed
 *   console.log(live.text);
 *
 * Protocol: OpenAI's Realtime transcription session, beta vocabulary (subprotocol
 * `openai-beta.realtime-v1`) — `transcription_session.update`,
 * `input_audio_buffer.append` (base64 pcm16, 24 kHz mono), server VAD; the server sends
 * `input_audio_buffer.speech_started/stopped` and per utterance
 * `conversation.item.input_audio_transcription.delta` then `.completed`. Browsers cannot set
 * headers on a WebSocket, so the credential (API key or access token) travels as the
 * `openai-insecure-api-key.<credential>` subprotocol beside `realtime`; the gateway checks and
 * strips it. WebSocket: the global one (browsers, node >= 22, node 20 with
 * --experimental-websocket) or `options.WebSocket`.
 */

/** The bridge's pcm16 rate (OpenAI's Realtime default). */
export const REALTIME_SAMPLE_RATE = 24_000;

/** What RealtimeTranscription needs of a WebSocket class (the WHATWG one). */
export type WebSocketLike = WebSocket;
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface RealtimeTranscriptionOptions {
  /** The gateway, e.g. "http://127.0.0.1:8080"; "" for the page's own origin. */
  baseUrl: string;
  /** An API key secret, or ... */
  apiKey?: string;
  /** ... an access token (JWT) from signUp/login. */
  token?: string;
  /** Spoken language, ISO 639-1 (default "en"). */
  language?: string;
  /** Transcription model name the bridge accepts (default "whisper-1", served by the platform's recognizer). */
  model?: string;
  /** Silence that ends an utterance, 200-5000 ms (default 500). */
  silenceDurationMs?: number;
  /** Audio kept before detected speech, 0-5000 ms (default 300). */
  prefixPaddingMs?: number;
  /** Called for every transcription event, in order. */
  onEvent?: (event: TranscriptionEvent) => void;
  /** How long connect() waits for the session (default 15 s). */
  connectTimeoutMs?: number;
  WebSocket?: WebSocketConstructor;
}

/** The events a transcription session reports (server events, decoded and typed). */
export type TranscriptionEvent =
  | { type: "speech_started"; itemId: string; audioStartMs: number }
  | { type: "speech_stopped"; itemId: string; audioEndMs: number }
  /** New words of an utterance; `interim` is all of it so far (may still change). */
  | { type: "delta"; itemId: string; delta: string; interim: string }
  | { type: "completed"; itemId: string; transcript: string }
  | { type: "failed"; itemId: string; message: string }
  /** An `error` event: the session goes on (bad event, unsupported setting...). */
  | { type: "error"; code: string; message: string; param?: string }
  | { type: "closed"; code: number; reason: string };

/** connect() failed, or the server refused the session's settings. */
export class RealtimeError extends Error {
  constructor(message: string, readonly code: string, readonly param?: string) {
    super(message);
    this.name = "RealtimeError";
  }
}

interface ServerEvent {
  type: string;
  item_id?: string;
  delta?: string;
  transcript?: string;
  audio_start_ms?: number;
  audio_end_ms?: number;
  error?: { code?: string; message?: string; param?: string | null };
}

/** ws(s):// URL of the bridge for a gateway base URL ("" = the page's origin). */
export function realtimeUrl(baseUrl: string, query: Record<string, string> = {}): string {
  const origin = baseUrl || (globalThis as { location?: { origin: string } }).location?.origin || "";
  const url = new URL("/openai/v1/realtime", origin);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
  return url.toString();
}

export class RealtimeTranscription {
  /** Completed utterances, in order. */
  readonly finals: string[] = [];
  private readonly pending = new Map<string, string>(); // item id -> interim text
  private lastEventAt = 0;
  private closedInfo: { code: number; reason: string } | null = null;
  private readonly waiters = new Set<() => void>();

  private constructor(private readonly ws: WebSocketLike, private readonly options: RealtimeTranscriptionOptions) {}

  /** Opens a transcription session and applies the options; rejects with RealtimeError. */
  static async connect(options: RealtimeTranscriptionOptions): Promise<RealtimeTranscription> {
    const credential = options.apiKey ?? options.token;
    if (!credential) throw new RealtimeError("an apiKey or token is needed", "credentials_missing");
    const Socket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Socket) throw new RealtimeError("no WebSocket in this runtime: pass options.WebSocket", "no_websocket");
    // The beta event vocabulary (the bridge speaks GA unless asked); the credential last.
    const ws = new Socket(realtimeUrl(options.baseUrl, { intent: "transcription" }),
      ["realtime", "openai-beta.realtime-v1", `openai-insecure-api-key.${credential}`]);
    const session = new RealtimeTranscription(ws, options);
    await session.start(options.connectTimeoutMs ?? 15_000);
    return session;
  }

  private start(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let phase: "created" | "updated" | "ready" = "created";
      const timer = setTimeout(() => fail(new RealtimeError("the transcription session did not start in time", "timeout")), timeoutMs);
      const fail = (error: RealtimeError) => {
        clearTimeout(timer);
        const open = phase !== "ready";
        phase = "ready"; // settled: the close below is no second failure
        reject(error);
        if (open) this.ws.close();
      };
      this.ws.addEventListener("message", (message: MessageEvent) => {
        const event = JSON.parse(String(message.data)) as ServerEvent;
        if (phase === "created" && event.type === "transcription_session.created") {
          phase = "updated";
          this.send({ type: "transcription_session.update", session: this.sessionSettings() });
        } else if (phase === "updated" && event.type === "transcription_session.updated") {
          phase = "ready";
          clearTimeout(timer);
          resolve();
        } else if (phase !== "ready" && event.type === "error") {
          fail(new RealtimeError(event.error?.message ?? "refused", event.error?.code ?? "error", event.error?.param ?? undefined));
        } else {
          this.dispatch(event);
        }
      });
      // A refused handshake (401/403/429 at the gateway) reaches a browser only as an error and
      // close 1006, without the reason; node's WebSocket may report the error alone.
      const refused = () => new RealtimeError("the gateway refused the connection (signed in? allowed to use speech?)",
        "connection_refused");
      this.ws.addEventListener("error", () => {
        if (phase !== "ready") fail(refused());
      });
      this.ws.addEventListener("close", (close: CloseEvent) => {
        this.closedInfo = { code: close.code, reason: close.reason };
        if (phase !== "ready") {
          fail(close.code === 1006 ? refused() : new RealtimeError(close.reason || "closed", `closed_${close.code}`));
          return;
        }
        this.emit({ type: "closed", code: close.code, reason: close.reason });
        this.wake();
      });
    });
  }

  private sessionSettings(): Record<string, unknown> {
    const o = this.options;
    return {
      input_audio_format: "pcm16",
      input_audio_transcription: { model: o.model ?? "whisper-1", language: o.language ?? "en" },
      turn_detection: { type: "server_vad", silence_duration_ms: o.silenceDurationMs ?? 500, prefix_padding_ms: o.prefixPaddingMs ?? 300 },
    };
  }

  private dispatch(event: ServerEvent): void {
    this.lastEventAt = Date.now();
    const itemId = event.item_id ?? "";
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.pending.set(itemId, this.pending.get(itemId) ?? "");
        this.emit({ type: "speech_started", itemId, audioStartMs: event.audio_start_ms ?? 0 });
        break;
      case "input_audio_buffer.speech_stopped":
        this.emit({ type: "speech_stopped", itemId, audioEndMs: event.audio_end_ms ?? 0 });
        break;
      case "conversation.item.input_audio_transcription.delta": {
        const interim = (this.pending.get(itemId) ?? "") + (event.delta ?? "");
        this.pending.set(itemId, interim);
        this.emit({ type: "delta", itemId, delta: event.delta ?? "", interim });
        break;
      }
      case "conversation.item.input_audio_transcription.completed":
        this.pending.delete(itemId);
        if (event.transcript?.trim()) this.finals.push(event.transcript.trim());
        this.emit({ type: "completed", itemId, transcript: event.transcript ?? "" });
        break;
      case "conversation.item.input_audio_transcription.failed":
        this.pending.delete(itemId);
        this.emit({ type: "failed", itemId, message: event.error?.message ?? "transcription failed" });
        break;
      case "error":
        this.emit({ type: "error", code: event.error?.code ?? "error", message: event.error?.message ?? "", param: event.error?.param ?? undefined });
        break;
      default:
        return; // committed, conversation.item.created, ...: nothing new for a transcript
    }
    this.wake();
  }

  private emit(event: TranscriptionEvent): void {
    this.options.onEvent?.(event);
  }

  private wake(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  private send(event: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(event));
  }

  /** The finished utterances joined. */
  get text(): string {
    return this.finals.join(" ");
  }

  /** What is being said now (utterances not completed yet). */
  get interim(): string {
    return [...this.pending.values()].filter(Boolean).join(" ");
  }

  get closed(): boolean {
    return this.closedInfo !== null;
  }

  /** Sends audio: pcm16 little-endian mono at 24 kHz (Int16Array, or its bytes). */
  append(pcm: Int16Array | Uint8Array): void {
    if (this.closed || pcm.byteLength === 0) return;
    const bytes = pcm instanceof Uint8Array ? pcm : new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    this.send({ type: "input_audio_buffer.append", audio: bytesToBase64(bytes) });
  }

  /**
   * Ends the session gracefully: commits the audio sent so far (the utterance in progress is
   * finalized), waits until every utterance has completed and the server has been quiet for
   * `quietMs`, at most `timeoutMs`, then closes (and waits for the close). Resolves with the
   * whole transcript.
   */
  async finish(timeoutMs = 15_000, quietMs = 1_200): Promise<string> {
    if (!this.closed) {
      this.lastEventAt = Date.now();
      this.send({ type: "input_audio_buffer.commit" }); // "buffer empty" errors are fine here
      const deadline = Date.now() + timeoutMs;
      while (!this.closed && Date.now() < deadline
        && (this.pending.size > 0 || Date.now() - this.lastEventAt < quietMs)) {
        await this.next(Math.min(200, Math.max(1, deadline - Date.now())));
      }
    }
    this.close();
    const closing = Date.now() + 2_000; // the closing handshake, so "closed" has been reported
    while (!this.closed && Date.now() < closing) await this.next(100);
    return this.text;
  }

  /** Waits for the next event, at most `ms`. */
  private next(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }

  /** Closes at once (utterances in progress are dropped). */
  close(): void {
    if (this.ws.readyState === 0 || this.ws.readyState === 1) this.ws.close(1000, "done");
  }
}

/** base64 of bytes (btoa exists in browsers and node >= 16). */
export function bytesToBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Float samples in [-1, 1] (Web Audio) as pcm16. */
export function floatToPcm16(samples: Float32Array): Int16Array {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    out[i] = v < 0 ? Math.round(v * 0x8000) : Math.round(v * 0x7fff);
  }
  return out;
}

/**
 * Streaming linear-interpolation resampler for mono audio: push() blocks of any size at
 * `fromRate`, get the matching samples at `toRate` (the phase carries across blocks). Good
 * enough for speech recognition from a microphone (e.g. 48 kHz -> 24 kHz).
 */
export class LinearResampler {
  private position = 0; // of the next output sample, in input samples from the current block's start
  private previous = 0; // the last sample of the previous block (position -1)
  private readonly step: number;

  constructor(readonly fromRate: number, readonly toRate: number) {
    if (!(fromRate > 0 && toRate > 0)) throw new RangeError("sample rates must be positive");
    this.step = fromRate / toRate;
  }

  push(input: Float32Array): Float32Array {
    if (this.fromRate === this.toRate) return input;
    const out = new Float32Array(Math.max(0, Math.ceil((input.length - this.position) / this.step)));
    let n = 0;
    while (this.position <= input.length - 1 && n < out.length) {
      const i = Math.floor(this.position);
      const frac = this.position - i;
      const a = i < 0 ? this.previous : input[i];
      const b = i + 1 < input.length ? input[i + 1] : a;
      out[n++] = a + (b - a) * frac;
      this.position += this.step;
    }
    this.position -= input.length;
    if (input.length) this.previous = input[input.length - 1];
    return out.subarray(0, n);
  }
}
