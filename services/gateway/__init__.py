"""The REST/JSON edge: routes built from the google.api.http annotations in protos/, OpenAPI,
and MLflow REST compatibility."""
