"""The HTTP service Label Studio talks to: routes, access control, CORS, request limits, metrics."""
