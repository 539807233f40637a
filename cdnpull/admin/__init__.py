"""
The admin side (SPEC.md section 6): the JSON API and console (L{api}), the
one path of every change (L{control}), the runtime changes and their
state file (L{state}), the live state as data (L{status}).
"""
