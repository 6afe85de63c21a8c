"""The reference chat backend: implements the gateway's upstream contract."""
