"""An agent built on the official Python MCP SDK, run against a Sluice runtime by tests/mcp.rs.

Usage: agent.py URL API_KEY MODE, where MODE is "legacy" (2025-11-25 initialize and session)
or "auto" (server/discover, which must settle on the stateless 2026-07-28). Exits non-zero with
the failed check on error.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def structured(result, tool):
    assert not result.is_error, f"{tool} failed: {result.content}"
    text = json.loads(result.content[0].text)
    assert text == result.structured_content, f"{tool}: text and structured content differ"
    return result.structured_content


async def main(url, key, mode):
    http = create_mcp_http_client(headers={"X-API-Key": key})
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        expected_version = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert client.protocol_version == expected_version, client.protocol_version
        assert "shop" in client.server_info.name, client.server_info

        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert sorted(tools) == sorted([
            "list_tables", "describe_table", "query_rows", "count_rows", "get_row",
            "insert_rows", "update_rows", "delete_rows", "top_customers", "rename_customer",
        ]), sorted(tools)
        assert tools["query_rows"].annotations.read_only_hint is True
        assert tools["delete_rows"].annotations.destructive_hint is True

        tables = structured(await client.call_tool("list_tables", {}), "list_tables")
        assert [t["name"] for t in tables["tables"]] == ["customers", "notes", "orders"], tables
        described = structured(await client.call_tool("describe_table", {"table": "customers"}), "describe_table")
        assert described["primaryKey"] == ["id"], described
        page = structured(await client.call_tool("query_rows", {
            "table": "customers", "select": ["id", "name"],
            "filters": [{"column": "id", "op": "lte", "value": 2}], "order": [{"column": "id"}],
        }), "query_rows")
        assert page["rows"] == [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Brian"}], page
        row = structured(await client.call_tool("get_row", {"table": "orders", "key": {"id": 12}}), "get_row")
        assert row["row"]["customer_id"] == 2, row
        count = structured(await client.call_tool("count_rows", {"table": "orders"}), "count_rows")
        assert count == {"count": 3}, count

        new_id = 60 if mode == "legacy" else 70
        inserted = structured(await client.call_tool("insert_rows", {
            "table": "customers", "rows": [{"id": new_id, "name": "Py"}],
        }), "insert_rows")
        assert inserted["inserted"] == 1, inserted
        updated = structured(await client.call_tool("update_rows", {
            "table": "customers", "set": {"name": "Python"},
            "filters": [{"column": "id", "op": "eq", "value": new_id}],
        }), "update_rows")
        assert updated["rows"][0]["name"] == "Python", updated
        deleted = structured(await client.call_tool("delete_rows", {
            "table": "customers", "filters": [{"column": "id", "op": "eq", "value": new_id}],
        }), "delete_rows")
        assert deleted["deleted"] == 1, deleted

        top = structured(await client.call_tool("top_customers", {"limit": 1}), "top_customers")
        assert top["rows"] == [{"id": 1, "name": "Ada", "balance": 10.5}], top

        failed = await client.call_tool("query_rows", {"table": "customers", "select": ["shoe_size"]})
        assert failed.is_error, failed
        assert json.loads(failed.content[0].text)["code"] == "unknown_column", failed.content

        resources = (await client.list_resources()).resources
        assert [str(r.uri) for r in resources] == [
            "sluice://tables/customers", "sluice://tables/notes", "sluice://tables/orders",
        ], resources
        read = await client.read_resource("sluice://tables/orders")
        assert json.loads(read.contents[0].text)["name"] == "orders", read
    print(f"python mcp agent ({mode}): every check passed")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
