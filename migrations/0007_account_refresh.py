"""Accounts, 2026 site: refresh token and its lease, cached quota, walls ("needs a human")."""

from peewee import BooleanField, DoubleField, IntegerField, TextField
from playhouse.migrate import SchemaMigrator, migrate


def upgrade(database) -> None:
    migrator = SchemaMigrator.from_database(database)
    have = {c.name for c in database.get_columns("account")}
    wanted = {
        "refresh_token": TextField(null=True),  # POST /api/v2/auths/refresh renews the token with it
        "refresh_expires_at": DoubleField(null=True),
        "token_at": DoubleField(null=True),  # when the current token was stored (unix s)
        "refresh_lease_until": DoubleField(null=True),  # one process refreshes at a time (compare-and-swap)
        "quota": TextField(null=True),  # entitlement_quota answer, JSON
        "quota_at": DoubleField(null=True),
        "walls": IntegerField(default=0),  # captcha/WAF walls in a row
        "needs_human": BooleanField(default=False),
    }
    migrate(*(migrator.add_column("account", name, field) for name, field in wanted.items() if name not in have))
