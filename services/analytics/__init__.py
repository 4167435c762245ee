"""The analytics service: read-only analysis over the tracker's runs."""
