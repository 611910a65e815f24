"""Thin I/O adapters (SMTP, DNS, LDAP, HTTP, storage): later issues."""
