"""Agents can call the app: it serves Gradio's MCP endpoint, whose tools are headkit's verbs, each described for a
model to choose and call it (Gradio takes a tool's description and its parameters' from the handler's docstring).

The app is started as a user starts it, with no GRADIO_MCP_SERVER set: serving MCP is the app's own choice
(`demo.launch(mcp_server=True)`), and needs the `mcp` extra that requirements.txt pins (`gradio[oauth,mcp]`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request

import pytest
from app_server import AppServer

VERBS = {"compare", "train_head", "load_head", "merge", "push_head", "find_heads"}
FILE_HINT = " If a user passes a file as an input"  # Gradio's own sentence, appended to tools that take files


@pytest.fixture(scope="module")
def app(tmp_path_factory, base_weights):
    assert importlib.util.find_spec("mcp"), "Gradio's MCP server needs the mcp extra: pip install -r requirements.txt"
    env = {"HEADKIT_BASE": str(base_weights), "HEADKIT_BASES": "", "HF_HUB_OFFLINE": "1"}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9"}
    os.environ.pop("GRADIO_MCP_SERVER", None)
    with AppServer(tmp_path_factory.mktemp("mcp_app"), env) as server:
        yield server


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_schema_lists_the_verbs_as_described_tools(app):
    status, body = _get(f"{app.url}/gradio_api/mcp/schema")
    assert status == 200, f"no MCP schema at /gradio_api/mcp/schema ({status}): launch with mcp_server=True"
    tools = {tool["meta"]["endpoint_name"]: tool for tool in json.loads(body)}

    assert VERBS <= tools.keys(), f"missing MCP tools for {sorted(VERBS - tools.keys())}"
    unclear = {}
    for verb in sorted(VERBS):
        tool = tools[verb]
        said = tool["description"].split(FILE_HINT)[0].strip()
        params = tool["inputSchema"].get("properties", {})
        silent = sorted(name for name, spec in params.items() if not spec.get("description"))
        if len(said) < 40 or silent:
            unclear[verb] = f"description {said!r}, parameters without a description: {silent}"
    assert not unclear, f"tools an agent cannot use from their description (write the handler's docstring): {unclear}"


def _rpc(app, method: str, params: dict | None = None) -> dict:
    """One JSON-RPC request to the streamable-HTTP endpoint an MCP client connects to; its answer."""
    message = {"jsonrpc": "2.0", "id": 1, "method": method, **({"params": params} if params else {})}
    request = urllib.request.Request(
        f"{app.url}/gradio_api/mcp/",
        data=json.dumps(message).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        text = reply.read().decode()
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")] or [json.loads(text)]
    (answer,) = [event for event in events if event.get("id") == 1]
    return answer


def test_an_mcp_client_lists_the_tools(app):
    """The streamable-HTTP endpoint an MCP client connects to answers `tools/list` (JSON-RPC over HTTP)."""
    answer = _rpc(app, "tools/list")
    assert VERBS <= {tool["name"] for tool in answer["result"]["tools"]}  # a tool is named after its handler


def test_an_agent_calls_find_heads_and_is_told_the_hub_is_offline(app, base_weights):
    """A `tools/call` runs the handler as the browser's click does: offline (HF_HUB_OFFLINE=1, nothing cached), the
    answer says so and names the fix, instead of failing."""
    arguments = {"base": str(base_weights), "sort": "downloads", "limit": 5}
    answer = _rpc(app, "tools/call", {"name": "find_heads", "arguments": arguments})
    text = " ".join(part.get("text", "") for part in answer["result"]["content"])
    assert not answer["result"].get("isError"), text
    assert "The Hub cannot be searched now" in text and "offline mode is on (HF_HUB_OFFLINE)" in text, text
