"""A minimal faust-streaming app for the smoke test: one agent that forwards each record to another topic.

Run as a worker in a subprocess by test_smoke.py:
    SMOKE_BROKER=127.0.0.1:9092 SMOKE_APP_ID=... SMOKE_IN=... SMOKE_OUT=... python faust_smoke_app.py worker
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable
from typing import Any

import faust

app = faust.App(
    os.environ["SMOKE_APP_ID"],
    broker=f"kafka://{os.environ['SMOKE_BROKER']}",
    store="memory://",
    datadir=os.environ.get("SMOKE_DATADIR", "faust-data"),
    web_enabled=False,
    autodiscover=False,
    topic_partitions=1,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(os.environ["SMOKE_IN"], value_type=bytes, value_serializer="raw")
sink = app.topic(os.environ["SMOKE_OUT"], value_type=bytes, value_serializer="json")


@app.agent(source, concurrency=1)
async def forward(stream: AsyncIterable[Any]) -> None:
    async for event in stream.events():  # type: ignore[attr-defined]
        await sink.send(key=event.key, value={"forwarded_by": "faust", "original": event.value.decode()})


if __name__ == "__main__":
    app.main()
