"""Apache Airflow provider and async client for the Salesforce Bulk API 2.0 ingest."""

__version__ = "0.1.0"
