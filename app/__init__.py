"""The service, one package per process (docs/architecture.md, "Layout"): web/ (the HTTP front), broker/,
worker/, cli/ (the supervisor and the command line), over wire/ (what travels between them) and shared/
(what more than one of them keeps or checks). Nothing is imported here: each process loads only its own."""
