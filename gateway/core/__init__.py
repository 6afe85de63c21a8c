"""The pure core: no I/O, no aiohttp, no redis; time is always passed in."""
