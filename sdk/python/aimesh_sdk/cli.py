"""`aimesh`: the command-line client of the aimesh gateway (installed with the SDK).

    aimesh signup --email you@example.com --organization Acme     # or: aimesh login --email ...
    aimesh keys create laptop                                      # the secret is shown once
    aimesh docs upload handbook.md --wait
    aimesh docs search "vacation policy"
    aimesh chat "How many vacation days do I get?" --doc documents/...
    aimesh speak "Hello there" -o hello.wav && aimesh transcribe hello.wav
    aimesh transcribe --mic                                        # live, until Ctrl-C
    aimesh usage --days 7 --by model
    aimesh --json docs list | jq .

Configuration, first match wins: command-line flags; environment variables AIMESH_GATEWAY_ADDR
(gateway host:port or https:// URL), AIMESH_API_KEY, AIMESH_TOKEN; the config file written by
`login`/`signup` ($AIMESH_CONFIG, else $XDG_CONFIG_HOME/aimesh/config.json, else
~/.config/aimesh/config.json; mode 0600).

Exit codes:
    0  success
    1  server-side failure (INTERNAL/UNKNOWN) or an unexpected error
    2  bad command line
    3  not signed in, or credentials rejected (UNAUTHENTICATED)
    4  not allowed: missing role or API-key scope (PERMISSION_DENIED)
    5  not found (NOT_FOUND)
    6  the request was refused as invalid (INVALID_ARGUMENT, FAILED_PRECONDITION,
       ALREADY_EXISTS, OUT_OF_RANGE, ABORTED)
    7  rate limit, quota or budget used up (RESOURCE_EXHAUSTED)
    8  gateway unreachable or too slow (UNAVAILABLE, DEADLINE_EXCEEDED)
    9  no audio input (transcribe --mic): no input device, the device refused the format, or
       the microphone support (pip install 'aimesh-sdk[mic]', libportaudio2) is missing
  130  interrupted (Ctrl-C; for transcribe --mic the first Ctrl-C stops listening and exits 0
       after the last results, a second one aborts)
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from aimesh.auth.v1 import auth_pb2
from aimesh.billing.v1 import billing_pb2
from aimesh.knowledge.v1 import knowledge_pb2
from aimesh.orchestrator.v1 import orchestrator_pb2
from aimesh.usage.v1 import usage_pb2
from google.protobuf import json_format
from google.protobuf import message as message_mod

from aimesh_sdk import audio, errors
from aimesh_sdk.client import DEFAULT_ADDRESS, Client

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNAUTHENTICATED, EXIT_DENIED = 0, 1, 2, 3, 4
EXIT_NOT_FOUND, EXIT_INVALID, EXIT_EXHAUSTED, EXIT_UNREACHABLE = 5, 6, 7, 8
EXIT_NO_AUDIO, EXIT_INTERRUPTED = 9, 130

_EXIT_BY_CODE = {
    grpc.StatusCode.UNAUTHENTICATED: EXIT_UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_INVALID,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_INVALID,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_INVALID,
    grpc.StatusCode.ABORTED: EXIT_INVALID,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
}


class CliError(Exception):
    """A failure the CLI explains itself: what happened, how to fix it, and the exit code."""

    def __init__(self, message: str, fix: str = "", code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.fix = fix
        self.code = code


# --- configuration ------------------------------------------------------------------------------

def config_path() -> Path:
    explicit = os.environ.get("AIMESH_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aimesh" / "config.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}", "fix or delete the file, then log in again")
    return data if isinstance(data, dict) else {}


def save_config(data: dict[str, Any]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)
    return path


class Session:
    """The resolved configuration and a connected client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = load_config()
        self.address = (args.address or os.environ.get("AIMESH_GATEWAY_ADDR")
                        or self.config.get("address") or DEFAULT_ADDRESS)
        self.api_key = args.api_key or os.environ.get("AIMESH_API_KEY") or ""
        self.token = os.environ.get("AIMESH_TOKEN") or ""
        if not (self.api_key or self.token):
            self.api_key = self.config.get("api_key", "")
            self.token = self.config.get("access_token", "")
        self.client = Client(self.address, api_key=self.api_key or None,
                             token=self.token or None, timeout=args.timeout)

    @property
    def uses_saved_login(self) -> bool:
        return bool(self.token and self.token == self.config.get("access_token"))

    def require_credentials(self) -> None:
        if not (self.api_key or self.token):
            raise CliError("not signed in", "run `aimesh login --email YOU` (or `aimesh signup`), "
                           "or set AIMESH_API_KEY", EXIT_UNAUTHENTICATED)
        if self.uses_saved_login and self.config.get("access_expire", 0) < time.time() + 30:
            self.refresh()

    def refresh(self) -> None:
        """Trades the saved refresh token for a new access token (they last 15 minutes)."""
        refresh_token = self.config.get("refresh_token")
        if not refresh_token:
            return
        try:
            pair = self.client.auth.RefreshToken(auth_pb2.RefreshTokenRequest(
                refresh_token=refresh_token))
        except errors.Unauthenticated as exc:
            raise CliError(f"your saved login has ended ({exc.reason})",
                           "run `aimesh login` again", EXIT_UNAUTHENTICATED) from None
        self.remember(pair)

    def remember(self, pair: auth_pb2.TokenPair, **extra: Any) -> None:
        self.config.update(
            address=self.address, access_token=pair.access_token,
            refresh_token=pair.refresh_token, access_expire=pair.expire_time.seconds,
            organization=pair.organization, user=pair.user, **extra)
        self.config.pop("api_key", None)
        save_config(self.config)
        self.token = pair.access_token
        self.client.use_token(pair.access_token)

    def organization(self) -> str:
        """The caller's organization: the saved one, else asked of Auth (user tokens only)."""
        org = self.config.get("organization", "") if not (
            self.args.api_key or os.environ.get("AIMESH_API_KEY")) else ""
        if org:
            return str(org)
        if self.api_key:
            raise CliError("this needs your organization, which an API key does not reveal",
                           "log in with e-mail (aimesh login --email …), or save the key with "
                           "`aimesh login --with-api-key KEY --organization organizations/…`",
                           EXIT_USAGE)
        return str(self.client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest()).organization)

    def close(self) -> None:
        self.client.close()


# --- output -------------------------------------------------------------------------------------

def as_dict(message: message_mod.Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], None]) -> None:
    """--json prints `data` (a message, a list of messages, or plain JSON); otherwise text()."""
    if not args.json:
        text()
        return
    if isinstance(data, message_mod.Message):
        data = as_dict(data)
    elif isinstance(data, list):
        data = [as_dict(d) if isinstance(d, message_mod.Message) else d for d in data]
    print(json.dumps(data, indent=2))


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if not rows:
        print("(none)")


def when(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    return dt.datetime.fromtimestamp(ts.seconds, dt.UTC).strftime("%Y-%m-%d %H:%M")


def enum_name(enum: Any, value: int, prefix: str = "") -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def money(micros: int, currency: str) -> str:
    return f"{micros / 1e6:,.2f} {currency}".strip()


def progress_bar(enabled: bool) -> Callable[[int, int], None]:
    tty = sys.stderr.isatty()
    shown = [-1]

    def show(sent: int, total: int) -> None:
        if not enabled:
            return
        pct = 100 * sent // max(total, 1)
        if not tty and pct < 100 and pct - shown[0] < 25:
            return
        shown[0] = pct
        filled = pct * 30 // 100
        bar = "#" * filled + "-" * (30 - filled)
        end = "\n" if pct >= 100 or not tty else ""
        print(f"\r[{bar}] {pct:3d}%  {sent / 1e6:.2f}/{total / 1e6:.2f} MB",
              end=end, file=sys.stderr, flush=True)

    return show


# --- commands -----------------------------------------------------------------------------------

def _password(args: argparse.Namespace) -> str:
    password = args.password or os.environ.get("AIMESH_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise CliError("no password given", "pass --password or set AIMESH_PASSWORD",
                       EXIT_USAGE)
    return getpass.getpass("password: ")


def cmd_signup(s: Session, args: argparse.Namespace) -> None:
    pair = s.client.sign_up(args.email, _password(args), args.organization, args.display_name)
    s.remember(pair, email=args.email)
    emit(args, {"user": pair.user, "organization": pair.organization,
                "config": str(config_path())},
         lambda: print(f"signed up as {args.email}: {pair.user} in {pair.organization}\n"
                       f"saved login to {config_path()}"))


def cmd_login(s: Session, args: argparse.Namespace) -> None:
    if args.api_key_login:
        s.client.use_api_key(args.api_key_login)
        s.client.orchestrator.ListModels(orchestrator_pb2.ListModelsRequest(page_size=1))
        s.config.update(address=s.address, api_key=args.api_key_login,
                        organization=args.organization or "")
        for stale in ("access_token", "refresh_token", "access_expire"):
            s.config.pop(stale, None)
        save_config(s.config)
        emit(args, {"config": str(config_path())},
             lambda: print(f"API key accepted; saved to {config_path()}"))
        return
    if not args.email:
        raise CliError("login needs --email (or --api-key)", "aimesh login --email you@example.com",
                       EXIT_USAGE)
    pair = s.client.login(args.email, _password(args), args.organization or "")
    s.remember(pair, email=args.email)
    emit(args, {"user": pair.user, "organization": pair.organization},
         lambda: print(f"logged in as {args.email} ({pair.organization})"))


def cmd_logout(s: Session, args: argparse.Namespace) -> None:
    refresh_token = s.config.get("refresh_token")
    if refresh_token:
        try:
            s.client.auth.Logout(auth_pb2.LogoutRequest(refresh_token=refresh_token))
        except errors.AimeshError:
            pass  # the local copy goes either way
    for key in ("access_token", "refresh_token", "access_expire", "api_key"):
        s.config.pop(key, None)
    save_config(s.config)
    emit(args, {"loggedOut": True}, lambda: print("logged out"))


def cmd_whoami(s: Session, args: argparse.Namespace) -> None:
    if s.api_key:
        prefix = "_".join(s.api_key.split("_")[:2])
        emit(args, {"apiKeyPrefix": prefix, "gateway": s.address},
             lambda: print(f"API key {prefix}…  gateway: {s.address}"))
        return
    user = s.client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
    roles = [enum_name(auth_pb2.Role, r, "ROLE_") for r in user.roles]
    emit(args, user, lambda: print(f"{user.email or user.name}  {user.organization}  "
                                   f"roles: {', '.join(roles) or '-'}  gateway: {s.address}"))


def cmd_keys_create(s: Session, args: argparse.Namespace) -> None:
    key = s.client.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=s.organization(),
        api_key=auth_pb2.ApiKey(display_name=args.display_name, scopes=args.scope or []),
        request_id=_uuid()))
    emit(args, key, lambda: print(
        f"created {key.name}\nsecret (shown once, store it now): {key.secret}"))


def cmd_keys_list(s: Session, args: argparse.Namespace) -> None:
    keys = list(s.client.paginate(s.client.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(
        parent=s.organization(), show_inactive=args.all)))
    emit(args, keys, lambda: table(
        [(k.name.rsplit("/", 1)[1], k.display_name, k.prefix,
          enum_name(auth_pb2.ApiKey.State, k.state, "STATE_"), ",".join(k.scopes) or "all",
          when(k.create_time)) for k in keys],
        ["ID", "NAME", "PREFIX", "STATE", "SCOPES", "CREATED"]))


def cmd_keys_revoke(s: Session, args: argparse.Namespace) -> None:
    name = args.key if "/" in args.key else f"{s.organization()}/apiKeys/{args.key}"
    key = s.client.auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name=name))
    emit(args, key, lambda: print(f"revoked {key.name}"))


def _doc_name(value: str) -> str:
    return value if value.startswith("documents/") else f"documents/{value}"


def cmd_docs_upload(s: Session, args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}", "check the path", EXIT_USAGE)
    doc = s.client.upload_file(path, display_name=args.name, mime_type=args.mime_type,
                               progress=progress_bar(not args.json and not args.quiet))
    if args.wait:
        doc = s.client.wait_until_processed(doc.name, timeout=args.wait_timeout)
    state = enum_name(knowledge_pb2.Document.State, doc.state, "STATE_")
    emit(args, doc, lambda: print(
        f"{doc.name}  {doc.display_name}  {state}"
        + (f"  ({doc.chunk_count} chunks)" if doc.chunk_count else "")
        + (f"  failed: {doc.failure_reason}" if doc.failure_reason else "")))
    if doc.state == knowledge_pb2.Document.STATE_FAILED:
        raise CliError(f"processing {doc.name} failed: {doc.failure_reason}",
                       "fix the file (or its --mime-type) and upload it again", EXIT_INVALID)


def cmd_docs_list(s: Session, args: argparse.Namespace) -> None:
    docs = list(s.client.paginate(s.client.knowledge.ListDocuments,
                                  knowledge_pb2.ListDocumentsRequest()))
    emit(args, docs, lambda: table(
        [(d.name, d.display_name, enum_name(knowledge_pb2.Document.State, d.state, "STATE_"),
          d.chunk_count, d.size_bytes, when(d.create_time)) for d in docs],
        ["NAME", "DISPLAY NAME", "STATE", "CHUNKS", "BYTES", "CREATED"]))


def cmd_docs_search(s: Session, args: argparse.Namespace) -> None:
    reply = s.client.search(args.query, top_k=args.top_k,
                            documents=[_doc_name(d) for d in args.doc or []])

    def text() -> None:
        if not reply.results:
            print("no matches")
        for i, hit in enumerate(reply.results, 1):
            where = " > ".join(hit.heading_path)
            print(f"[{i}] {hit.document_display_name} ({hit.document}, chunk {hit.chunk_index}"
                  f"{', ' + where if where else ''})  score {hit.score:.3f}")
            print("    " + " ".join(hit.text.split())[:300])

    emit(args, reply, text)


def cmd_docs_rm(s: Session, args: argparse.Namespace) -> None:
    for name in args.documents:
        s.client.knowledge.DeleteDocument(knowledge_pb2.DeleteDocumentRequest(name=_doc_name(name)))
    emit(args, {"deleted": [_doc_name(n) for n in args.documents]},
         lambda: print("\n".join(f"deleted {_doc_name(n)}" for n in args.documents)))


def cmd_chat(s: Session, args: argparse.Namespace) -> None:
    streaming = not args.json
    reply = s.client.chat(
        args.message, conversation=args.conversation or "", model=args.model or "",
        documents=[_doc_name(d) for d in args.doc or []], grounded=args.grounded,
        on_delta=(lambda t: print(t, end="", flush=True)) if streaming else None, check=False)
    if streaming:
        print()
        for i, c in enumerate(reply.citations, 1):
            quote = " ".join(c.quote.split())[:160]
            print(f"  [{i}] {c.document_display_name} ({c.document}): \"{quote}\"")
        print(f"({reply.conversation}, {reply.model or 'default model'}, {reply.state})",
              file=sys.stderr)
    else:
        emit(args, {"conversation": reply.conversation, "text": reply.text, "model": reply.model,
                    "state": reply.state,
                    "citations": [as_dict(c) for c in reply.citations]}, lambda: None)
    failure = reply.error
    if failure is not None and reply.state == "STATE_FAILED":
        raise failure


def cmd_transcribe(s: Session, args: argparse.Namespace) -> None:
    if args.mic == bool(args.file):
        raise CliError("transcribe needs a WAV FILE or --mic (one of them)",
                       "aimesh transcribe speech.wav, or aimesh transcribe --mic", EXIT_USAGE)
    if args.mic:
        transcribe_microphone(s, args)
        return
    finals: list[str] = []
    try:
        for response in s.client.transcribe_stream(
                args.file, interim_results=bool(args.interim), realtime=args.realtime,
                language_code=args.language):
            for result in response.results:
                if not result.alternatives:
                    continue
                text = result.alternatives[0].transcript
                if result.is_final:
                    finals.append(text)
                    if not args.json:
                        print(f"\r{text}", flush=True)
                elif not args.json:
                    print(f"\r… {text}", end="", flush=True, file=sys.stderr)
    except (ValueError, EOFError) as exc:  # wave's errors for files that are not PCM WAV
        raise CliError(f"{args.file}: {exc}", "convert it: ffmpeg -i IN -ac 1 -c:a pcm_s16le "
                       "out.wav", EXIT_USAGE) from None
    emit(args, {"transcript": " ".join(finals), "utterances": finals}, lambda: None)


class LiveTranscript:
    """Prints recognition results as they arrive. Text: each final on its own line; on a
    terminal the current interim overwrites one line until its final replaces it (piped
    output gets finals only). --json: one JSON object per result, interims included."""

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines
        self.tty = sys.stdout.isatty()
        self.line_open = False  # an interim is shown on the current line

    def show(self, response: Any) -> None:
        for result in response.results:
            if not result.alternatives:
                continue
            text = result.alternatives[0].transcript
            if self.json_lines:
                print(json.dumps({**as_dict(result), "isFinal": result.is_final,
                                  "transcript": text}), flush=True)
            elif result.is_final:
                print(("\r\033[K" if self.line_open else "") + text, flush=True)
                self.line_open = False
            elif self.tty:
                width = shutil.get_terminal_size().columns - 2
                print("\r\033[K" + ("…" + text[-width + 1:] if len(text) > width else text),
                      end="", flush=True)
                self.line_open = True

    def close(self) -> None:
        if self.line_open:
            print(flush=True)
            self.line_open = False


def _audio_device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def _stop_on_first_interrupt(mic: audio.Microphone) -> Callable[[int, Any], None]:
    """Ctrl-C once: stop listening, let the pending utterance finish; twice: abort."""
    def handler(signum: int, frame: Any) -> None:
        mic.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping: finishing the last utterance (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)
    return handler


def transcribe_microphone(s: Session, args: argparse.Namespace) -> None:
    if args.seconds is not None and args.seconds <= 0:
        raise CliError("--seconds must be positive", "e.g. --seconds 10", EXIT_USAGE)
    mic = audio.Microphone(args.sample_rate, device=_audio_device(args.device),
                           seconds=args.seconds)
    try:
        mic.open()
    except audio.MicrophoneUnavailable as exc:
        raise CliError(str(exc), exc.fix, EXIT_NO_AUDIO) from None
    printer = LiveTranscript(args.json)
    previous = signal.signal(signal.SIGINT, _stop_on_first_interrupt(mic))
    try:
        until = f"for {args.seconds:g} s" if args.seconds else "until Ctrl-C"
        print(f"listening {until} …", file=sys.stderr, flush=True)
        for response in s.client.transcribe_microphone(
                mic, interim_results=args.interim is not False, language_code=args.language,
                single_utterance=args.single_utterance, silence_ms=args.silence_ms,
                max_utterance_seconds=args.max_utterance_seconds,
                speech_start_timeout_seconds=args.speech_start_timeout):
            printer.show(response)
    finally:
        signal.signal(signal.SIGINT, previous)
        mic.close()
        printer.close()
    if mic.overflows:
        print(f"warning: {mic.overflows} audio chunks were dropped (the machine was too busy)",
              file=sys.stderr)


def cmd_speak(s: Session, args: argparse.Namespace) -> None:
    seconds = s.client.synthesize_to_wav(args.text, args.output, voice=args.voice or "",
                                         sample_rate=args.sample_rate)
    emit(args, {"output": args.output, "seconds": round(seconds, 3)},
         lambda: print(f"wrote {args.output} ({seconds:.2f} s)"))


def cmd_models(s: Session, args: argparse.Namespace) -> None:
    models = list(s.client.paginate(s.client.orchestrator.ListModels,
                                    orchestrator_pb2.ListModelsRequest()))
    emit(args, models, lambda: table([(m.name, m.display_name, m.provider) for m in models],
                                     ["NAME", "DISPLAY NAME", "PROVIDER"]))


_GROUPS = {"resource": usage_pb2.GetUsageSummaryRequest.GROUP_BY_RESOURCE_TYPE,
           "model": usage_pb2.GetUsageSummaryRequest.GROUP_BY_MODEL,
           "day": usage_pb2.GetUsageSummaryRequest.GROUP_BY_DAY,
           "key": usage_pb2.GetUsageSummaryRequest.GROUP_BY_API_KEY}


def cmd_usage(s: Session, args: argparse.Namespace) -> None:
    request = usage_pb2.GetUsageSummaryRequest(
        group_by=[_GROUPS["resource"]] + [_GROUPS[g] for g in args.by or [] if g != "resource"])
    now = dt.datetime.now(dt.UTC)
    request.start_time.FromDatetime(now - dt.timedelta(days=args.days))
    request.end_time.FromDatetime(now + dt.timedelta(minutes=1))
    summary = s.client.usage.GetUsageSummary(request)
    emit(args, summary, lambda: table(
        [(enum_name(usage_pb2.ResourceType, r.resource_type, "RESOURCE_TYPE_").lower(),
          r.model or "-",
          f"{r.day.year:04d}-{r.day.month:02d}-{r.day.day:02d}" if r.day.year else "-",
          f"{r.quantity_micros / 1e6:g}", r.record_count) for r in summary.rows],
        ["RESOURCE", "MODEL", "DAY", "QUANTITY", "RECORDS"]))


def cmd_budgets_list(s: Session, args: argparse.Namespace) -> None:
    budgets = list(s.client.paginate(s.client.usage.ListBudgets, usage_pb2.ListBudgetsRequest()))
    emit(args, budgets, lambda: table(
        [(b.name, b.display_name, enum_name(usage_pb2.Budget.Scope, b.scope, "SCOPE_"),
          money(b.monthly_limit_micros, b.currency_code) if b.monthly_limit_micros else "-",
          money(b.spent_micros, b.currency_code) if b.monthly_limit_micros else "-",
          b.monthly_token_limit or "-") for b in budgets],
        ["NAME", "DISPLAY NAME", "SCOPE", "MONTHLY LIMIT", "SPENT", "TOKEN LIMIT"]))


def cmd_budgets_create(s: Session, args: argparse.Namespace) -> None:
    if not (args.tokens or args.amount):
        raise CliError("a budget needs --tokens or --amount", "e.g. --amount 25 --currency USD",
                       EXIT_USAGE)
    budget = usage_pb2.Budget(display_name=args.display_name,
                              scope=usage_pb2.Budget.SCOPE_ORGANIZATION,
                              monthly_token_limit=args.tokens or 0)
    if args.amount:
        budget.monthly_limit_micros = round(args.amount * 1_000_000)
        budget.currency_code = args.currency
    created = s.client.usage.CreateBudget(usage_pb2.CreateBudgetRequest(
        budget=budget, request_id=_uuid()))
    emit(args, created, lambda: print(f"created {created.name}"))


def cmd_budgets_rm(s: Session, args: argparse.Namespace) -> None:
    name = args.budget if args.budget.startswith("budgets/") else f"budgets/{args.budget}"
    s.client.usage.DeleteBudget(usage_pb2.DeleteBudgetRequest(name=name))
    emit(args, {"deleted": name}, lambda: print(f"deleted {name}"))


def cmd_invoices(s: Session, args: argparse.Namespace) -> None:
    invoices = list(s.client.paginate(s.client.billing.ListInvoices,
                                      billing_pb2.ListInvoicesRequest()))
    emit(args, invoices, lambda: table(
        [(i.name, i.number, enum_name(billing_pb2.Invoice.State, i.state, "STATE_"),
          f"{when(i.period_start_time)[:10]}..{when(i.period_end_time)[:10]}",
          money(i.total_micros, i.currency_code)) for i in invoices],
        ["NAME", "NUMBER", "STATE", "PERIOD", "TOTAL"]))


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


# --- argument parsing ---------------------------------------------------------------------------

Command = Callable[[Session, argparse.Namespace], None]


def _command(parent: Any, name: str, func: Command, help_: str,
             auth: bool = True) -> argparse.ArgumentParser:
    """One sub-command; `auth` says whether it needs credentials."""
    p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
    p.set_defaults(func=func, needs_auth=auth)
    return p


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="gateway host:port or URL (default: config, "
                        f"$AIMESH_GATEWAY_ADDR, {DEFAULT_ADDRESS})")
    parser.add_argument("--api-key", help="API key for this command (default: $AIMESH_API_KEY, "
                        "then the saved login)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="deadline of each unary call in seconds (default 30)")


def _add_account_commands(sub: Any) -> None:
    p = _command(sub, "signup", cmd_signup, "create a user and organization, and log in",
                 auth=False)
    p.add_argument("--email", required=True)
    p.add_argument("--organization", required=True, help="display name of the new organization")
    p.add_argument("--display-name", default="", help="your name")
    p.add_argument("--password", help="default: $AIMESH_PASSWORD, else prompted")
    p = _command(sub, "login", cmd_login, "log in with e-mail and password, or save an API key",
                 auth=False)
    p.add_argument("--email")
    p.add_argument("--password", help="default: $AIMESH_PASSWORD, else prompted")
    p.add_argument("--organization", help="organizations/… when you belong to several (with "
                   "--with-api-key: the key's organization, for `keys` commands)")
    p.add_argument("--with-api-key", dest="api_key_login", metavar="KEY",
                   help="save this API key instead of logging in with a password")
    _command(sub, "logout", cmd_logout, "forget the saved login (and revoke its refresh token)",
             auth=False)
    _command(sub, "whoami", cmd_whoami, "show the signed-in user, organization and roles")
    _command(sub, "models", cmd_models, "list the models chat can use")


def _add_keys_commands(sub: Any) -> None:
    keys = _command(sub, "keys", cmd_keys_list, "manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    p = _command(keys, "create", cmd_keys_create, "create an API key (its secret is shown once)")
    p.add_argument("display_name", metavar="NAME")
    p.add_argument("--scope", action="append", help="limit the key (repeatable), e.g. inference, "
                   "knowledge.read, knowledge.write, speech, usage.read")
    p = _command(keys, "list", cmd_keys_list, "list API keys")
    p.add_argument("--all", action="store_true", help="include revoked and expired keys")
    p = _command(keys, "revoke", cmd_keys_revoke, "revoke an API key")
    p.add_argument("key", metavar="KEY", help="key id or organizations/…/apiKeys/… name")


def _add_docs_commands(sub: Any) -> None:
    docs = _command(sub, "docs", cmd_docs_list, "manage and search documents").add_subparsers(
        dest="docs_command", required=True, metavar="ACTION")
    p = _command(docs, "upload", cmd_docs_upload, "upload a file (text, Markdown, HTML, PDF)")
    p.add_argument("file")
    p.add_argument("--name", help="display name (default: the file name)")
    p.add_argument("--mime-type", help="default: guessed from the file name")
    p.add_argument("--wait", action="store_true", help="wait until it is READY (or FAILED)")
    p.add_argument("--wait-timeout", type=float, default=300.0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _command(docs, "list", cmd_docs_list, "list documents")
    p = _command(docs, "search", cmd_docs_search, "search documents (hybrid: semantic + keyword)")
    p.add_argument("query")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--doc", action="append", help="only this document (repeatable)")
    p = _command(docs, "rm", cmd_docs_rm, "delete documents")
    p.add_argument("documents", nargs="+", metavar="DOCUMENT")


def _add_chat_command(sub: Any) -> None:
    p = _command(sub, "chat", cmd_chat, "send a message and stream the answer")
    p.add_argument("message")
    p.add_argument("--doc", action="append", help="ground the answer in this document "
                   "(repeatable); citations are printed after the answer")
    p.add_argument("--grounded", action="store_true", help="ground in all your documents")
    p.add_argument("--model", help="models/… (default: the platform default)")
    p.add_argument("--conversation", help="continue conversations/… (default: a new one)")


def _add_transcribe_command(sub: Any) -> None:
    p = _command(sub, "transcribe", cmd_transcribe,
                 "transcribe a mono 16-bit WAV file, or the microphone (--mic), streaming")
    p.add_argument("file", nargs="?", help="WAV file (or use --mic)")
    p.add_argument("--mic", action="store_true", help="listen to the microphone until Ctrl-C "
                   "(or --seconds); needs the mic extra: pip install 'aimesh-sdk[mic]'")
    p.add_argument("--seconds", type=float, help="with --mic: stop after this much audio")
    p.add_argument("--device", help="with --mic: input device index or name (default: the "
                   "system's default input; list them with python -m sounddevice)")
    p.add_argument("--sample-rate", type=int, default=16000,
                   help="with --mic: capture rate in Hz, 8000-48000 (default 16000)")
    p.add_argument("--interim", action=argparse.BooleanOptionalAction, default=None,
                   help="show interim results (default: on with --mic, off for files)")
    p.add_argument("--language", default="en-US", help="BCP-47 language (default en-US)")
    p.add_argument("--silence-ms", type=int, help="silence that ends an utterance, 200-5000 "
                   "(default: the server's 500)")
    p.add_argument("--max-utterance-seconds", type=float,
                   help="longest utterance before it is cut, 1-60 (default 30)")
    p.add_argument("--speech-start-timeout", type=float, metavar="SECONDS",
                   help="stop when nobody speaks for this long, 1-60 (default: never)")
    p.add_argument("--single-utterance", action="store_true",
                   help="stop after the first utterance")
    p.add_argument("--realtime", type=float, default=0.0,
                   help="files: pace audio like a microphone: 1 = real time (default 0: as "
                   "fast as possible)")


def _add_speak_command(sub: Any) -> None:
    p = _command(sub, "speak", cmd_speak, "synthesize speech into a WAV file")
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True, help="WAV file to write")
    p.add_argument("--voice", help="voices/… (default: the platform default)")
    p.add_argument("--sample-rate", type=int, default=22050)


def _add_billing_commands(sub: Any) -> None:
    p = _command(sub, "usage", cmd_usage, "summarize metered usage")
    p.add_argument("--days", type=int, default=30, help="period: the last N days (default 30)")
    p.add_argument("--by", action="append", choices=sorted(_GROUPS),
                   help="also group by (repeatable)")
    budgets = _command(sub, "budgets", cmd_budgets_list,
                       "monthly spend and token budgets").add_subparsers(
        dest="budgets_command", metavar="ACTION")
    _command(budgets, "list", cmd_budgets_list, "list budgets")
    p = _command(budgets, "create", cmd_budgets_create, "create an organization budget")
    p.add_argument("--display-name", default="")
    p.add_argument("--amount", type=float, help="monthly money cap, e.g. 25 (with --currency)")
    p.add_argument("--currency", default="USD")
    p.add_argument("--tokens", type=int, help="monthly token cap")
    p = _command(budgets, "rm", cmd_budgets_rm, "delete a budget")
    p.add_argument("budget")
    _command(sub, "invoices", cmd_invoices, "list invoices")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aimesh", description="Command-line client of the aimesh gateway.",
        epilog="Exit codes:" + (__doc__ or "").split("Exit codes:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in (_add_account_commands, _add_keys_commands, _add_docs_commands,
                         _add_chat_command, _add_transcribe_command, _add_speak_command,
                         _add_billing_commands):
        add_commands(sub)
    return parser


# --- errors -------------------------------------------------------------------------------------

_FIX_BY_REASON = {
    "CREDENTIALS_MISSING": "run `aimesh login` or set AIMESH_API_KEY",
    "TOKEN_EXPIRED": "run `aimesh login` again",
    "TOKEN_INVALID": "run `aimesh login` again",
    "INVALID_CREDENTIALS": "check the e-mail and password",
    "EMAIL_TAKEN": "log in instead: aimesh login --email …",
    "SCOPE_REQUIRED": "use a key with that scope (aimesh keys create NAME --scope …) or log in",
    "ROLE_REQUIRED": "ask an organization admin or owner",
    "BUDGET_EXCEEDED": "raise or delete the budget (aimesh budgets), or wait for next month",
    "TOKEN_BUDGET_EXCEEDED": "raise or delete the budget (aimesh budgets), or wait for next month",
    "MODEL_NOT_FOUND": "pick one of `aimesh models`",
}
_FIX_BY_CODE = {
    grpc.StatusCode.UNAUTHENTICATED: "run `aimesh login` (or check AIMESH_API_KEY)",
    grpc.StatusCode.PERMISSION_DENIED: "use an account or key with the needed role or scope",
    grpc.StatusCode.NOT_FOUND: "check the name (list them first)",
    grpc.StatusCode.INVALID_ARGUMENT: "fix the fields named above",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "wait and retry, or raise the limit",
    grpc.StatusCode.UNAVAILABLE: "is the gateway running? start it with scripts/up, or pass "
                                 "--address / set AIMESH_GATEWAY_ADDR",
    grpc.StatusCode.DEADLINE_EXCEEDED: "retry, or raise --timeout",
}


def explain(exc: errors.AimeshError, address: str) -> tuple[str, str, int]:
    lines = [f"{exc.reason}: {exc.message}"]
    if isinstance(exc, errors.InvalidArgument):
        lines += [f"  {v.field}: {v.description}" for v in exc.field_violations]
    fix = _FIX_BY_REASON.get(exc.reason) or _FIX_BY_CODE.get(exc.code, "")
    if isinstance(exc, errors.RateLimited) and exc.retry_after is not None:
        fix = f"retry in {exc.retry_after:g} s (your plan's rate limit)"
    if exc.code == grpc.StatusCode.UNAVAILABLE:
        if exc.reason == "UNAVAILABLE":  # no service answered: the connection itself failed
            lines[0] += f" (gateway {address})"
        else:  # a service behind the gateway said so
            fix = "a service the gateway needs is down or restarting; retry shortly"
    return "\n".join(lines), fix, _EXIT_BY_CODE.get(exc.code, EXIT_FAILURE)


def fail(message: str, fix: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    if fix:
        print(f"fix: {fix}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    session: Session | None = None
    try:
        session = Session(args)
        if args.needs_auth:
            session.require_credentials()
        try:
            args.func(session, args)
        except errors.Unauthenticated as exc:
            # A saved login whose access token was cut short (rotation, clock skew): refresh once.
            if not (session.uses_saved_login and exc.reason == "TOKEN_EXPIRED"):
                raise
            session.refresh()
            args.func(session, args)
    except CliError as exc:
        fail(str(exc), exc.fix, exc.code)
    except errors.AimeshError as exc:
        fail(*explain(exc, session.address if session else "?"))
    except KeyboardInterrupt:
        fail("interrupted", "", EXIT_INTERRUPTED)
    finally:
        if session is not None:
            session.close()


if __name__ == "__main__":
    main()
