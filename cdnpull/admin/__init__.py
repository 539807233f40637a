"""
The admin side (docs/admin-api.md): the JSON API and console (L{api}), the
one path of every change (L{control}), the runtime changes and their
state file (L{state}), the live state as data (L{status}).
"""
