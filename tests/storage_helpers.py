"""An S3 endpoint for tests: moto's threaded server in the test process, on localhost (no other network)."""

import logging

SECRET = "s3cret-value-that-must-not-leak"
BUCKET = "team-bucket"


class S3Server:
    """moto's S3 server in this process; its state (buckets, objects) survives a stop and a restart."""

    def __init__(self, port: int = 0, bucket: str | None = None):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.url = f"http://{host}:{self.port}"
        if bucket:
            import boto3

            boto3.client("s3", endpoint_url=self.url, aws_access_key_id="team-key", aws_secret_access_key=SECRET,
                         region_name="us-east-1").create_bucket(Bucket=bucket)

    def stop(self):
        self.server.stop()

    def env(self, **extra) -> dict:
        return {"AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": self.url,
                "AWS_DEFAULT_REGION": "us-east-1", **extra}
