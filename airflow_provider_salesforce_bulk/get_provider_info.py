"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_salesforce_bulk import __version__

__all__ = ["AUTH_TYPE_CHOICES", "conn_fields", "get_provider_info", "ui_field_behaviour"]

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

# The 3.x form shows an enum's values as they are, and a None in the enum as a "null" choice.
_AUTH_TYPE_LABELS = {
    "client_credentials": "Client credentials (OAuth 2.0)",
    "jwt_bearer": "JWT bearer (certificate)",
    "refresh_token": "Refresh token",
    "password": "Username and password (OAuth 2.0)",
    "soap_login": "SOAP login (API 64.0 and older)",
    "access_token": "Access token (fixed session)",
}


def conn_fields() -> dict[str, Any]:
    """The connection's extra fields (``conn-fields``): the form of Airflow 3.2+, and of 3.1 via the hook.

    Extras are stored under these plain keys; hooks/connection.py reads the same names. The 3.x form
    renders no placeholder for an extra field, only ``examples`` (a suggestion list) and the
    description, so the hints a placeholder would give are there.
    """
    return {
        "auth_type": {
            "label": "Auth type",
            "description": "How to log in. Left empty, it is inferred from the fields that are filled in.",
            # No None in the enum: empty (null) is the cleared dropdown, not a seventh choice.
            "schema": {
                "type": ["string", "null"],
                "enum": list(AUTH_TYPE_CHOICES),
                "values_display": dict(_AUTH_TYPE_LABELS),
            },
        },
        "client_id": {
            "label": "Client ID (consumer key)",
            "description": "Consumer key of the connected app / external client app (3MVG9...).",
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
            "description": "JWT bearer: path of a PEM key file readable by workers and triggerers "
            "(/opt/airflow/secrets/salesforce.key).",
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
            "schema": {
                "type": ["string", "null"],
                "format": "url",
                "examples": ["https://mydomain.my.salesforce.com"],
            },
        },
        "domain": {
            "label": "Domain",
            "description": "'login' (production), 'test' (sandbox) or a My Domain host, when Host is empty.",
            "schema": {"type": ["string", "null"], "examples": ["login", "test"]},
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
            "description": "Salesforce REST API version, e.g. 64.0.",
            "schema": {
                "type": ["string", "null"],
                "default": "64.0",
                "pattern": r"^v?\d{2,3}\.\d$",
                "examples": ["64.0"],
            },
        },
    }


def ui_field_behaviour() -> dict[str, Any]:
    """``ui-field-behaviour``: labels and placeholders of the standard fields.

    Port stays visible: the connection list's Test button of Airflow 3.3.2 posts ``port: 0`` for an
    empty port and the API then refuses the test (400, "host or port to test differs"). A stored
    port of 443 (unused by the provider) makes that button work; ``airflow connections test`` always
    does. Extra-field placeholders are not listed: the 3.x form does not render them.
    """
    return {
        "hidden-fields": ["schema"],
        "relabeling": {
            "host": "Login URL / My Domain",
            "login": "Username",
            "port": "Port (unused; 443 lets the UI Test button work)",
        },
        "placeholders": {
            "host": "https://mydomain.my.salesforce.com (or 'login', 'test')",
            "login": "integration.user@example.com",
            "password": "user password (password and SOAP login only)",
            "port": "443",
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
                "python-modules": [
                    "airflow_provider_salesforce_bulk.operators.salesforce_bulk",
                    "airflow_provider_salesforce_bulk.operators.salesforce_bulk_query",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "Salesforce Bulk API 2.0",
                "python-modules": [
                    "airflow_provider_salesforce_bulk.triggers.salesforce_bulk",
                    "airflow_provider_salesforce_bulk.triggers.round_backoff",
                ],
            }
        ],
        "extra-links": ["airflow_provider_salesforce_bulk.operators.links.SalesforceBulkJobLink"],
        "connection-types": [
            {
                "connection-type": "salesforce_bulk",
                "hook-class-name": _HOOK,
                "hook-name": "Salesforce Bulk API 2.0",
                "conn-fields": conn_fields(),
                "ui-field-behaviour": ui_field_behaviour(),
            }
        ],
    }
