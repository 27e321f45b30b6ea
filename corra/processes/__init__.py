"""The process domain: lifecycle, spec, records, the process actors and their manager.

It sits on the actor kernel (`corra.actors`) and knows backends only through the protocol it
defines; which backends exist is decided above it (`corra.backends`' entry points).
"""
