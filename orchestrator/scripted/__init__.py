"""A scripted Anthropic Messages API, so that the real Claude Code CLI runs without a model.

The CLI is pointed at this server (ANTHROPIC_BASE_URL=api.url, and any CLAUDE_CODE_OAUTH_TOKEN or
ANTHROPIC_API_KEY) and believes it talks to a model. Instead of a model, each conversation follows a
scenario: a list of turns, each one assistant message (text, tool calls), an HTTP error, a delay or a
response that never ends. The CLI runs its real tools (Bash, Write, Edit, Read, ...) on the real files and
sends the results back, which the caller can read (`api.tool_results(marker)`). The end-to-end tests write
their scenarios in Python (tests/support/scripted_api.py re-exports this package); rehearsal mode
(`run.py --rehearsal`) reads them from a JSON file (script_file.py, where the format is).

The modules: turns.py (the turns and the helpers that make them), requests.py (what arrived),
answers.py (what a turn comes to on the wire), server.py (`ScriptedAPI`), script_file.py (the JSON script).

How a request finds its turn
----------------------------
- The scenario: `api.script(marker, *turns)` registers turns under a marker string. A request belongs to
  the scenario whose marker appears in the text of its first user message (the prompt the CLI was given;
  Claude Code may add <system-reminder> blocks around it). If several markers appear, the longest wins.
  A request that matches none gets a 400 invalid_request_error whose message says so and quotes the
  prompt, so the agent's own result event explains the failure (or the `default` scenario, if given).
- The position in the scenario: the number of assistant turns already in `messages` (runs of consecutive
  assistant messages count once). Nothing is kept per conversation, so one server serves a manager and
  many workers at once, and a CLI's retry of a request arrives at the same position.
- The attempt: a counter per (marker, position), for `attempts(...)`: the first retries get errors, a
  later one the answer. Two conversations on one marker share these counters: give each its own marker.
- Past the end of a scenario, the answer is text("Done.") with stop_reason end_turn, and the agent ends.
- Requests without `tools` in the body (a title, a quota probe of the interactive CLI) get a short text
  and use no turn. An unstreamed request with tools is a turn: the CLI repeats a turn unstreamed after a
  404. HEAD /api/hello gets 200, POST /v1/messages/count_tokens {"input_tokens": 100}, anything else a
  404 error. All are recorded: `api.requests`, `api.requests_for(marker)`, `api.log()` (only the latest
  `keep_requests`, if the server was given that number).
- Capacity: `ScriptedAPI(capacity=K, retry_after=S)` answers a conversation request that arrives while K
  are being answered with 429 rate_limit_error and `retry-after: S`, recorded ("429 over capacity") but
  using no turn and no attempt. Counters: `api.answered(marker)` (conversation requests answered with a
  turn), `api.rate_limited` (429s given, scripted or over capacity), `api.max_in_flight` (the most
  conversation requests answered at once).

Usage is reported per reply, by default 1000 input and 100 output tokens and no cache tokens, so that the
CLI's total_cost_usd for a model with a known price is above 0 ($0.0045 a message for claude-sonnet-4-5);
`costing(reply, input=, output=, cache_creation=, cache_read=, model=)` sets other figures, and a model
for the answer to name (else it names the model the request asked for). As the API does, a stream's
message_start carries the input and cache tokens and 1 output token, its message_delta the output tokens
(cumulative); an unstreamed answer carries them all.

What the real CLI 2.1.332 sends and does (measured with a fresh HOME, headless `-p`)
-----------------------------------------------------------------------------------
- Requests: HEAD /api/hello first (no credentials), unless CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
  (DISABLE_AUTOUPDATER=1 changes nothing here). Then only POST /v1/messages?beta=true, streamed, with
  12 tools; no side requests in `-p` mode. Interactive (on a terminal) adds two POST
  /v1/messages?beta=true without tools before the first turn, and /context POST
  /v1/messages/count_tokens?beta=true.
- Headers: `Authorization: Bearer <CLAUDE_CODE_OAUTH_TOKEN>`, or `x-api-key` with ANTHROPIC_API_KEY;
  anthropic-beta, anthropic-version, x-app: cli, X-Claude-Code-Session-Id, User-Agent
  "claude-cli/2.1.332 (external, sdk-cli)". X-Stainless-Retry-Count is always 0: the CLI retries by itself.
- The first user message is a <system-reminder> block (working folder, platform, ...) then the prompt.
  A reply's text and tool calls come back as one assistant message. Tool results come back with a
  "<system-reminder>... tokens left</system-reminder>" appended, which `tool_results` leaves out.
- Every failure ends in a result event with subtype "success" (sic), is_error true, api_error_status the
  HTTP status, and exit code 1. Counts below are requests in all, pauses between them:
  - 408, 409, 429, 500, 502, 503, 529: retried 10 times (11 requests), pauses about 0.6, 1.1, 2.2, 4.5,
    8.7, 17, 35, 35, 35, 35 s: 175-190 s to the failure. A `retry-after` header (seconds) makes a pause
    longer (6 gave 6.4 s) but never shorter (0 or 0.01 changed nothing); `retry-after-ms` is ignored.
    CLAUDE_CODE_MAX_RETRIES=N allows N retries instead (N=1: 2 requests).
  - Any of these with the header `x-should-retry: false` (error(..., should_retry=False)): 1 request.
  - 401: 2 requests, 0.6 s apart; result "Failed to authenticate. API Error: 401 <message>", except that
    the message "invalid x-api-key" gives "Not logged in · Please run /login".
  - 400: 6 requests without pause, each without some beta features (anthropic-beta entries, thinking
    display, tool search); result "API Error: 400 <message>".
  - 403: 1 request, "Failed to authenticate. API Error: 403 <message>". 413: 1 request, the CLI's own
    "Request too large (max 32MB)..." text. 404: repeated once unstreamed (`stream` false).
  - 402 (billing_error): 1 request, with or without x-should-retry; result "API Error: 402 <message>".
    With x-should-retry: false, 429 reads "API Error: Server is temporarily limiting requests (not your
    usage limit) · <message>" and 529 "API Error: 529 <message>. This is a server-side issue, usually
    temporary — try again in a moment. ...".
- Short error scenarios, then: attempts(error(529), error(529), text("ok")) recovers in about 2 s;
  attempts(error(529), error(529), error(529, should_retry=False)) fails with 529 in about 2 s (3
  requests); error(401) fails in under a second; error(500, should_retry=False) at once.
- --max-turns 1 and a tool call: the tool runs, its result is not sent; subtype error_max_turns.
- hang(): the CLI waits. Its stream idle watchdog cannot go below 300 s (a smaller
  CLAUDE_STREAM_IDLE_TIMEOUT_MS is raised to 300000), and API_TIMEOUT_MS=3000 did not end it within 60 s.
  Kill the CLI. If stop() cuts the stream instead, the CLI retries like a 5xx against the closed port and
  ends after about 145 s: is_error, api_error "connection_failed", "API Error: Connection refused ...".
  So stop the agents before the server.

Example
-------
    from orchestrator.scripted.server import ScriptedAPI
    from orchestrator.scripted.turns import bash, reply, text, write

    with ScriptedAPI() as api:
        api.script("TASK-1", reply(text("Creating it."), write("hello.txt", "hi\\n")), bash("cat hello.txt"))
        # claude -p "TASK-1: write hello.txt" with ANTHROPIC_BASE_URL=api.url, CLAUDE_CODE_OAUTH_TOKEN=x
        assert api.tool_results("TASK-1") == ["File created successfully at: hello.txt ...", "hi"]
"""
