# The example from README.md ("Simulating regions in your own tests"), run for real.
import pytest


@pytest.mark.relay_network(regions=["us-east", "eu-west"], latency_ms=40)
def test_message_crosses_regions_and_survives_a_partition(relay_network):
    import asyncio
    import json

    import websockets

    async def scenario():
        east = await websockets.connect(relay_network.edge("us-east"))
        west = await websockets.connect(relay_network.edge("eu-west"))
        await east.recv(), await west.recv()  # "connected"
        await west.send(json.dumps({"op": "subscribe", "channel": "chat:demo"}))
        await west.recv()  # "subscribed"

        relay_network.partition("us-east", "eu-west")
        await east.send(json.dumps({"op": "publish", "channel": "chat:demo", "data": "hi"}))
        assert json.loads(await east.recv())["op"] == "ack"  # stored in us-east
        relay_network.heal()

        message = json.loads(await asyncio.wait_for(west.recv(), 30))
        assert message["data"] == "hi" and message["origin"] == "us-east"
        await east.close(), await west.close()

    asyncio.run(scenario())
