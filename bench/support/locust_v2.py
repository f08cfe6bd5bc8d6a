"""A locust user that speaks V2: POST /v2/models/{model}/infer with one request body, back to back.

    locust -f bench/support/locust_v2.py --headless -u 64 -r 64 -t 8s --host http://127.0.0.1:PORT
Model and body from the environment: LLMSHIP_V2_MODEL, LLMSHIP_V2_BODY (a JSON string).
FastHttpUser (geventhttpclient) is locust's fastest client; no wait between requests.
"""

import os

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

MODEL = os.environ.get("LLMSHIP_V2_MODEL", "fake-v2")
BODY = os.environ.get("LLMSHIP_V2_BODY", '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}').encode()
PATH = f"/v2/models/{MODEL}/infer"


class V2User(FastHttpUser):
    wait_time = constant(0)

    @task
    def infer(self):
        self.client.post(PATH, data=BODY, headers={"Content-Type": "application/json"})
