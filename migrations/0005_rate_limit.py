"""Operations: per-key rate-limit windows, and the request log the status page shows."""

from peewee import CharField, DoubleField, IntegerField, Model, TextField


def upgrade(database) -> None:
    class RateLimitWindow(Model):
        key = CharField(max_length=64)  # sha256 of the API key (or client address), never the key
        window = IntegerField()  # unix minute
        count = IntegerField(default=0)

        class Meta:
            table_name = "rate_limit"
            primary_key = False
            indexes = ((("key", "window"), True),)

    class RequestLog(Model):
        created = DoubleField(index=True)
        request_id = CharField(max_length=64, null=True)
        method = CharField(max_length=10)
        route = CharField(max_length=200)
        status = IntegerField()
        model = CharField(max_length=200, null=True)
        provider = CharField(max_length=50, null=True)
        duration_ms = DoubleField(null=True)
        ttft_ms = DoubleField(null=True)
        prompt_tokens = IntegerField(null=True)
        completion_tokens = IntegerField(null=True)
        error_code = CharField(max_length=100, null=True)
        error_message = TextField(null=True)

        class Meta:
            table_name = "request_log"

    with database.bind_ctx([RateLimitWindow, RequestLog]):
        database.create_tables([RateLimitWindow, RequestLog], safe=True)
