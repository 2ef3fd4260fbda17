/**
 * aimesh TypeScript SDK: typed clients for every service of the contract over gRPC-Web
 * through the gateway (Envoy's grpc_web filter), in browsers and in node (global fetch).
 *
 *   import { createAimesh, chat } from "@aimesh/sdk";
 *   const aimesh = createAimesh({ baseUrl: "http://127.0.0.1:8080", apiKey: "amk_..." });
 *   const docs = await aimesh.knowledge.listDocuments({});
 *   const reply = await chat(aimesh, { content: "How many vacation days?", documents: [doc] });
 *
 * Message types and service descriptors are generated from proto/ by protoc-gen-es (src/gen,
 * `npm run generate`). This file adds credentials, typed errors and a few stream helpers.
 */
import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AuthService } from "./gen/aimesh/auth/v1/auth_pb.js";
import { BillingService } from "./gen/aimesh/billing/v1/billing_pb.js";
import {
  ConversationService,
  Message_State,
  type Message,
  type SendMessageResponse,
} from "./gen/aimesh/conversation/v1/conversation_pb.js";
import { KnowledgeService } from "./gen/aimesh/knowledge/v1/knowledge_pb.js";
import { OrchestratorService, type Citation } from "./gen/aimesh/orchestrator/v1/orchestrator_pb.js";
import { SpeechService } from "./gen/aimesh/speech/v1/speech_pb.js";
import { UsageService } from "./gen/aimesh/usage/v1/usage_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

export { Code, ConnectError } from "@connectrpc/connect";
export { create } from "@bufbuild/protobuf";

export interface AimeshOptions {
  /** The gateway, e.g. "http://127.0.0.1:8080" or "" for the page's own origin (console). */
  baseUrl: string;
  /** An API key secret (sent as x-api-key). */
  apiKey?: string;
  /** An access token (JWT) from signUp/login (sent as authorization: Bearer). */
  token?: string;
  /** Default deadline of unary calls in milliseconds (default 30 s); streams have none. */
  timeoutMs?: number;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof globalThis.fetch;
}

/** The credentials a client sends; change them with setToken/setApiKey. */
interface Credentials {
  apiKey?: string;
  token?: string;
}

export interface FieldViolation {
  field: string;
  description: string;
}

/**
 * Every failed call rejects with an AimeshError (a ConnectError): the gRPC code, the stable
 * `reason` and `metadata` of google.rpc.ErrorInfo, BadRequest `fieldViolations`, and
 * `retryAfterSeconds` from RetryInfo or the gateway's x-ratelimit-reset header.
 */
export class AimeshError extends ConnectError {
  readonly reason: string;
  readonly errorMetadata: Record<string, string>;
  readonly fieldViolations: FieldViolation[];
  readonly retryAfterSeconds?: number;

  constructor(source: ConnectError) {
    const json = jsonStatus(source.rawMessage);
    super(json?.message ?? source.rawMessage, source.code, source.metadata, undefined, source.cause);
    this.details = source.details;
    const info = source.findDetails(ErrorInfoSchema)[0];
    const jsonInfo = json?.details?.find((d) => String(d["@type"] ?? "").endsWith("google.rpc.ErrorInfo"));
    this.reason = info?.reason || (jsonInfo?.reason as string | undefined) || Code[source.code];
    this.errorMetadata = { ...((info?.metadata ?? jsonInfo?.metadata ?? {}) as Record<string, string>) };
    this.fieldViolations = source
      .findDetails(BadRequestSchema)
      .flatMap((b) => b.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    if (!this.fieldViolations.length && json?.details) {
      const bad = json.details.find((d) => String(d["@type"] ?? "").endsWith("google.rpc.BadRequest"));
      this.fieldViolations = ((bad?.fieldViolations ?? []) as FieldViolation[]).map((v) => ({ field: v.field, description: v.description }));
    }
    const retry = source.findDetails(RetryInfoSchema)[0]?.retryDelay;
    const reset = source.metadata.get("x-ratelimit-reset");
    if (retry) this.retryAfterSeconds = Number(retry.seconds) + retry.nanos / 1e9;
    else if (reset !== null && reset !== "" && !Number.isNaN(Number(reset))) this.retryAfterSeconds = Number(reset);
    // The name stays "ConnectError": Connect passes errors of that shape through unchanged.
  }

  get isRateLimited(): boolean {
    return this.code === Code.ResourceExhausted && !this.isBudgetExceeded &&
      (this.retryAfterSeconds !== undefined || this.reason.endsWith("THROTTLED"));
  }

  get isBudgetExceeded(): boolean {
    return this.reason === "BUDGET_EXCEEDED" || this.reason === "TOKEN_BUDGET_EXCEEDED";
  }

  /** A short, human explanation with what to do about it (for UIs and logs). */
  get hint(): string {
    if (this.isBudgetExceeded) return "A budget of your organization is used up for this month.";
    if (this.isRateLimited) return `Rate limit reached; retry in ${this.retryAfterSeconds ?? "a few"} s.`;
    switch (this.code) {
      case Code.Unauthenticated: return "Sign in again (or check the API key).";
      case Code.PermissionDenied: return "Your role or API key scope does not allow this.";
      case Code.NotFound: return "It does not exist (or was deleted).";
      case Code.InvalidArgument: return this.fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; ");
      case Code.Unavailable: return "The service is unreachable right now; try again shortly.";
      default: return "";
    }
  }

  // ConnectError's own instanceof accepts anything shaped like a ConnectError; an
  // AimeshError is only what this class (or a copy of this package) constructed.
  static [Symbol.hasInstance](value: unknown): boolean {
    return value instanceof Error && Object.hasOwn(value, "fieldViolations") && Object.hasOwn(value, "reason");
  }

  static from(error: unknown): AimeshError {
    if (error instanceof AimeshError) return error;
    return new AimeshError(ConnectError.from(error));
  }
}

/** The typed exception for an in-band error (e.g. a failed chat answer's Message.error). */
export function errorFromStatus(status: Status): AimeshError {
  return new AimeshError(new ConnectError(status.message, status.code as Code));
}

/** Some gateway rejections (ext_authz denials over gRPC-Web) carry the JSON google.rpc.Status
 * as the grpc-message instead of binary details: decode it so callers see the same fields. */
function jsonStatus(message: string): { message?: string; details?: Record<string, unknown>[] } | undefined {
  if (!message.startsWith("{")) return undefined;
  try {
    const parsed = JSON.parse(message) as { message?: string; details?: Record<string, unknown>[] };
    return typeof parsed === "object" && parsed !== null ? parsed : undefined;
  } catch {
    return undefined;
  }
}

function credentialsInterceptor(credentials: Credentials): Interceptor {
  return (next) => async (req) => {
    if (credentials.apiKey) req.header.set("x-api-key", credentials.apiKey);
    else if (credentials.token) req.header.set("authorization", `Bearer ${credentials.token}`);
    return next(req);
  };
}

async function* typedErrors<T>(stream: AsyncIterable<T>): AsyncIterable<T> {
  try {
    yield* stream;
  } catch (error) {
    throw AimeshError.from(error);
  }
}

const errorInterceptor: Interceptor = (next) => async (req) => {
  try {
    const res = await next(req);
    if (res.stream) {
      return { ...res, message: typedErrors(res.message) } as typeof res;
    }
    return res;
  } catch (error) {
    throw AimeshError.from(error);
  }
};

export interface Aimesh {
  auth: Client<typeof AuthService>;
  billing: Client<typeof BillingService>;
  conversation: Client<typeof ConversationService>;
  knowledge: Client<typeof KnowledgeService>;
  orchestrator: Client<typeof OrchestratorService>;
  speech: Client<typeof SpeechService>;
  usage: Client<typeof UsageService>;
  transport: Transport;
  setToken(token: string | undefined): void;
  setApiKey(apiKey: string | undefined): void;
}

/** Clients for every service, sharing one gRPC-Web transport and one set of credentials. */
export function createAimesh(options: AimeshOptions): Aimesh {
  const credentials: Credentials = { apiKey: options.apiKey, token: options.token };
  const baseUrl = options.baseUrl || (typeof location !== "undefined" ? location.origin : "");
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline: Interceptor = (next) => async (req) => {
    // Unary calls get the default deadline; streams run as long as their work.
    if (!req.stream && !req.header.has("grpc-timeout")) {
      req.header.set("grpc-timeout", `${timeoutMs}m`);
    }
    return next(req);
  };
  const transport = createGrpcWebTransport({
    baseUrl,
    fetch: options.fetch,
    interceptors: [errorInterceptor, credentialsInterceptor(credentials), deadline],
  });
  return {
    auth: createClient(AuthService, transport),
    billing: createClient(BillingService, transport),
    conversation: createClient(ConversationService, transport),
    knowledge: createClient(KnowledgeService, transport),
    orchestrator: createClient(OrchestratorService, transport),
    speech: createClient(SpeechService, transport),
    usage: createClient(UsageService, transport),
    transport,
    setToken(token) {
      credentials.token = token;
      credentials.apiKey = undefined;
    },
    setApiKey(apiKey) {
      credentials.apiKey = apiKey;
      credentials.token = undefined;
    },
  };
}

/** A request_id for a retry-unsafe call (AIP-155). */
export function requestId(): string {
  return globalThis.crypto.randomUUID();
}

/**
 * Every item of a List method across pages:
 * `for await (const d of paginate(aimesh.knowledge.listDocuments, {}, (r) => r.documents))`.
 */
export async function* paginate<Req extends object, Res extends { nextPageToken: string }, Item>(
  call: (request: Req) => Promise<Res>,
  request: Req,
  items: (response: Res) => Item[],
): AsyncIterable<Item> {
  let pageToken = "";
  for (;;) {
    const response = await call({ ...request, pageToken });
    yield* items(response);
    if (!response.nextPageToken) return;
    pageToken = response.nextPageToken;
  }
}

export interface ChatOptions {
  content: string;
  /** Continue this conversation (default: a new one titled after the message). */
  conversation?: string;
  model?: string;
  /** Ground the answer in these documents (`documents/...`); citations point into them. */
  documents?: string[];
  /** Ground the answer in all the organization's documents. */
  grounded?: boolean;
  onDelta?: (text: string) => void;
  onCitation?: (citation: Citation) => void;
  signal?: AbortSignal;
}

export interface ChatReply {
  conversation: string;
  text: string;
  citations: Citation[];
  model: string;
  userMessage?: Message;
  assistantMessage?: Message;
  /** "complete", "incomplete" or "failed" (from the stored assistant message). */
  state: "complete" | "incomplete" | "failed" | "unknown";
  /** Why the answer failed or stopped early (in-band: the call itself succeeded). */
  error?: AimeshError;
}

/** Sends a message and collects the streamed answer (SendMessage server stream). */
export async function chat(aimesh: Aimesh, options: ChatOptions): Promise<ChatReply> {
  let conversation = options.conversation;
  if (!conversation) {
    const created = await aimesh.conversation.createConversation({
      conversation: { title: options.content.slice(0, 60) },
      requestId: requestId(),
    });
    conversation = created.name;
  }
  const reply: ChatReply = { conversation, text: "", citations: [], model: "", state: "unknown" };
  const stream = aimesh.conversation.sendMessage(
    {
      conversation,
      content: options.content,
      model: options.model ?? "",
      retrieval: options.grounded || options.documents?.length
        ? { enabled: true, documents: options.documents ?? [] }
        : undefined,
      requestId: requestId(),
    },
    { signal: options.signal },
  );
  for await (const event of stream) foldChat(reply, event, options);
  return reply;
}

function foldChat(reply: ChatReply, event: SendMessageResponse, options: ChatOptions): void {
  const e = event.event;
  switch (e.case) {
    case "userMessage":
      reply.userMessage = e.value;
      break;
    case "generation":
      reply.model = e.value.model;
      break;
    case "delta":
      reply.text += e.value.text;
      options.onDelta?.(e.value.text);
      break;
    case "citation":
      reply.citations.push(e.value);
      options.onCitation?.(e.value);
      break;
    case "assistantMessage": {
      const message = e.value;
      reply.assistantMessage = message;
      reply.text = message.content;
      if (message.citations.length) reply.citations = [...message.citations];
      reply.state = message.state === Message_State.COMPLETE ? "complete"
        : message.state === Message_State.INCOMPLETE ? "incomplete"
        : message.state === Message_State.FAILED ? "failed" : "unknown";
      if (message.error && message.error.code !== 0) reply.error = errorFromStatus(message.error);
      break;
    }
  }
}

/** A WAV file (RIFF, 16-bit mono PCM) around raw LINEAR16 samples, e.g. to play synthesized speech. */
export function pcmToWav(pcm: Uint8Array, sampleRate: number): Uint8Array {
  const out = new Uint8Array(44 + pcm.length);
  const view = new DataView(out.buffer);
  const ascii = (offset: number, text: string) => {
    for (let i = 0; i < text.length; i++) out[offset + i] = text.charCodeAt(i);
  };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + pcm.length, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  ascii(36, "data");
  view.setUint32(40, pcm.length, true);
  out.set(pcm, 44);
  return out;
}

/** Raw 16-bit PCM samples and rate of a mono PCM WAV file (e.g. for Recognize). */
export function wavToPcm(wav: Uint8Array): { pcm: Uint8Array; sampleRate: number } {
  const view = new DataView(wav.buffer, wav.byteOffset, wav.byteLength);
  const tag = (offset: number) => String.fromCharCode(...wav.subarray(offset, offset + 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a WAV file");
  let offset = 12;
  let sampleRate = 0;
  let channels = 0;
  let bits = 0;
  while (offset + 8 <= wav.length) {
    const id = tag(offset);
    const size = view.getUint32(offset + 4, true);
    if (id === "fmt ") {
      channels = view.getUint16(offset + 10, true);
      sampleRate = view.getUint32(offset + 12, true);
      bits = view.getUint16(offset + 22, true);
    } else if (id === "data") {
      if (channels !== 1 || bits !== 16) throw new Error(`need mono 16-bit PCM, got ${channels} channels, ${bits}-bit`);
      return { pcm: wav.subarray(offset + 8, offset + 8 + size), sampleRate };
    }
    offset += 8 + size + (size % 2);
  }
  throw new Error("WAV file without a data chunk");
}

/** Build a request message from its schema and fields (re-export of protobuf's create). */
export function message<Desc extends DescMessage>(schema: Desc, init?: Partial<MessageShape<Desc>>): MessageShape<Desc> {
  return create(schema, init as never);
}

export * as auth from "./gen/aimesh/auth/v1/auth_pb.js";
export * as billing from "./gen/aimesh/billing/v1/billing_pb.js";
export * as conversation from "./gen/aimesh/conversation/v1/conversation_pb.js";
export * as knowledge from "./gen/aimesh/knowledge/v1/knowledge_pb.js";
export * as orchestrator from "./gen/aimesh/orchestrator/v1/orchestrator_pb.js";
export * as speech from "./gen/aimesh/speech/v1/speech_pb.js";
export * as usage from "./gen/aimesh/usage/v1/usage_pb.js";
export { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
export {
  REALTIME_SAMPLE_RATE,
  LinearResampler,
  RealtimeError,
  RealtimeTranscription,
  bytesToBase64,
  floatToPcm16,
  realtimeUrl,
  type RealtimeTranscriptionOptions,
  type TranscriptionEvent,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./realtime.js";
