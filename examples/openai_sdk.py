"""The OpenAI SDK on lbclient: three OpenAI-compatible stand-ins, one killed mid-run, no call lost.

What to set on the SDK (docs/sdks.md says why):
- ``base_url="http://<service>/v1"``: the pool's service name, so every call is a pool request;
- ``max_retries=0``: retries are the balancer's, each one to another host;
- ``http_client=``: an ``LBClient`` (openai 3.x also takes httpx2 clients: see the second half).
"""

import httpx2
import openai

from lbclient import LBClient, RetryPolicy
from lbclient.httpx2 import LoadBalancingTransport
from lbclient.testing import Backend

#: The SDK resends its POSTs after a lost connection too; with max_retries=0 the balancer does it.
RETRIES = RetryPolicy(max_attempts=3, retry_non_idempotent=True)
ASK = [{"role": "user", "content": "hello there"}]

with Backend("a") as a, Backend("b") as b, Backend("c") as c:
    hosts = [a.url, b.url, c.url]

    with LBClient(hosts, service="openai", retries=RETRIES, timeout=30.0) as http:
        client = openai.OpenAI(base_url="http://openai/v1", api_key="unused", http_client=http, max_retries=0)
        failed, answered = 0, []
        for call in range(30):
            if call == 10:
                b.kill()  # a host dies mid-run
            try:
                completion = client.chat.completions.create(model="stand-in", messages=ASK)
                answered.append(completion.choices[0].message.content.split(":")[0])
            except openai.APIError:
                failed += 1
        print("failed calls:", failed)
        print("answered by:", {name: answered.count(name) for name in "abc"})
        stream = client.chat.completions.create(model="stand-in", messages=ASK, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        print("streamed:", text.split(":")[1].strip())

    b.start()
    pool = LoadBalancingTransport(hosts, service="openai", retries=RETRIES)
    with httpx2.Client(mounts={"all://openai": pool}, timeout=30.0) as http2:
        client = openai.OpenAI(base_url="http://openai/v1", api_key="unused", http_client=http2, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="stand-in", messages=ASK)
        print("httpx2 answered by a pool host:", raw.http_response.extensions["lb_host"] in hosts)
