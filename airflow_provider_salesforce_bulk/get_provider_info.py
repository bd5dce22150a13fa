"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_salesforce_bulk import __version__

__all__ = ["get_provider_info"]

_SECRET = {"type": ["string", "null"], "format": "password"}
_TEXT = {"type": ["string", "null"]}
_HOOK = "airflow_provider_salesforce_bulk.hooks.salesforce_bulk.SalesforceBulkHook"

AUTH_TYPE_CHOICES = [
    "client_credentials",
    "jwt_bearer",
    "refresh_token",
    "password",
    "soap_login",
    "access_token",
]


def _conn_fields() -> dict[str, Any]:
    # Extras are stored under these plain keys; hooks/connection.py reads the same names.
    return {
        "auth_type": {
            "label": "Auth type",
            "description": "How to log in. Left empty, it is inferred from the fields that are filled in.",
            "schema": {"type": ["string", "null"], "enum": [*AUTH_TYPE_CHOICES, None]},
        },
        "client_id": {
            "label": "Client ID (consumer key)",
            "description": "Consumer key of the connected app / external client app.",
            "schema": _TEXT,
        },
        "client_secret": {
            "label": "Client secret (consumer secret)",
            "schema": _SECRET,
        },
        "private_key": {
            "label": "Private key (PEM)",
            "description": "JWT bearer: the PEM text of the RSA private key (or use the key file path).",
            "schema": {"type": ["string", "null"], "format": "multiline"},
        },
        "private_key_file_path": {
            "label": "Private key file path",
            "description": "JWT bearer: path of a PEM key file readable by workers and triggerers.",
            "schema": _TEXT,
        },
        "private_key_passphrase": {"label": "Private key passphrase", "schema": _SECRET},
        "security_token": {
            "label": "Security token",
            "description": "Password and SOAP login: appended to the password when the org requires it.",
            "schema": _SECRET,
        },
        "refresh_token": {"label": "Refresh token", "schema": _SECRET},
        "access_token": {
            "label": "Access token",
            "description": "A fixed session id; cannot be refreshed when it expires (tests, short jobs).",
            "schema": _SECRET,
        },
        "instance_url": {
            "label": "Instance URL",
            "description": "Access token auth: https://<mydomain>.my.salesforce.com.",
            "schema": {"type": ["string", "null"], "format": "url"},
        },
        "domain": {
            "label": "Domain",
            "description": "'login' (production), 'test' (sandbox) or a My Domain host, when Host is empty.",
            "schema": _TEXT,
        },
        "allowed_hosts": {
            "label": "Allowed hosts",
            "description": (
                "Hosts that may receive the access token besides Salesforce's own domains "
                "(*.salesforce.com, *.force.com, ...) and the login host, e.g. a proxy or custom domain "
                "the org's instance URL points to: 'api.example.com' or '*.example.com', comma separated."
            ),
            "schema": _TEXT,
        },
        "api_version": {
            "label": "API version",
            "schema": {"type": ["string", "null"], "default": "64.0", "pattern": r"^v?\d{2,3}\.\d$"},
        },
    }


def get_provider_info() -> dict[str, Any]:
    """Everything Airflow needs to register the hook, operator, trigger, links and connection form."""
    return {
        "package-name": "airflow-provider-salesforce-bulk",
        "name": "Salesforce Bulk API 2.0",
        "description": "Deferrable loads into Salesforce with the Bulk API 2.0 ingest.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Salesforce Bulk API 2.0",
                "external-doc-url": "https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Salesforce Bulk API 2.0",
                "python-modules": ["airflow_provider_salesforce_bulk.hooks.salesforce_bulk"],
            }
        ],
        "operators": [
            {
                "integration-name": "Salesforce Bulk API 2.0",
                "python-modules": ["airflow_provider_salesforce_bulk.operators.salesforce_bulk"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Salesforce Bulk API 2.0",
                "python-modules": ["airflow_provider_salesforce_bulk.triggers.salesforce_bulk"],
            }
        ],
        "extra-links": ["airflow_provider_salesforce_bulk.operators.links.SalesforceBulkJobLink"],
        "connection-types": [
            {
                "connection-type": "salesforce_bulk",
                "hook-class-name": _HOOK,
                "hook-name": "Salesforce Bulk API 2.0",
                "conn-fields": _conn_fields(),
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Login URL / My Domain", "login": "Username"},
                    "placeholders": {
                        "host": "https://mydomain.my.salesforce.com (or 'login', 'test')",
                        "login": "integration.user@example.com",
                        "password": "user password (password and SOAP login only)",
                        "client_id": "3MVG9...",
                        "api_version": "64.0",
                        "domain": "login",
                        "allowed_hosts": "sf-proxy.example.com, *.example.org",
                    },
                },
            }
        ],
    }
