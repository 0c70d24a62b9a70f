"""Deployment: compact storage, CSR and int8 torch variants, inference, runtimes, export, bench, slim."""
