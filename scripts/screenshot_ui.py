"""Headless Chromium screenshots of the MLflow / Prefect UIs (docs/screenshots/), driven over the DevTools protocol.

Usage: .venv/bin/python scripts/screenshot_ui.py URL OUT.png [ACTION ...]; an ACTION clicks the visible element
whose text is exactly that string, or is `xy:X,Y` (click there), `type:TEXT`, `key:Enter`, `sleep:S`.
Chromium from $CHROMIUM (default /usr/bin/chromium), headless, with a throw-away profile. Needs `websockets` (installed with Prefect).
"""
import asyncio, base64, json, os, subprocess, sys, tempfile, time, urllib.request
import websockets

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

async def main(url, out, clicks, width=1400, height=900, wait=12):
    prof = tempfile.mkdtemp()
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--no-first-run", f"--user-data-dir={prof}", "--remote-debugging-port=9337",
                             f"--window-size={width},{height}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                tabs = json.load(urllib.request.urlopen("http://127.0.0.1:9337/json"))
                break
            except OSError:
                time.sleep(0.3)
        ws_url = next(t["webSocketDebuggerUrl"] for t in tabs if t["type"] == "page")
        async with websockets.connect(ws_url, max_size=50_000_000) as ws:
            n = 0
            async def call(method, **params):
                nonlocal n
                n += 1
                await ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == n:
                        return msg.get("result", msg)
            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", url=url)
            await asyncio.sleep(wait)
            for text in clicks:
                if text.startswith("sleep:"):
                    await asyncio.sleep(float(text[6:])); continue
                if text.startswith("xy:"):
                    x, y = map(float, text[3:].split(","))
                    for t in ("mouseMoved", "mousePressed", "mouseReleased"):
                        await call("Input.dispatchMouseEvent", type=t, x=x, y=y, button="left", clickCount=1)
                    await asyncio.sleep(2); continue
                if text.startswith("type:"):
                    await call("Input.insertText", text=text[5:]); await asyncio.sleep(1); continue
                if text == "key:Enter":
                    for t in ("keyDown", "keyUp"):
                        await call("Input.dispatchKeyEvent", type=t, key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r")
                    await asyncio.sleep(3); continue
                js = """(() => { const want = %s; const els = [...document.querySelectorAll('button, [role=menuitem], [role=menuitemcheckbox], [role=option], [role=tab], a, span, div, label')];
                  const hit = els.filter(e => e.offsetParent !== null && (e.innerText||'').trim() === want);
                  const e = hit[hit.length - 1]; if (!e) return null; e.scrollIntoView({block:'center'}); const r = e.getBoundingClientRect();
                  return [r.x + r.width/2, r.y + r.height/2]; })()""" % json.dumps(text)
                res = await call("Runtime.evaluate", expression=js, returnByValue=True)
                xy = res.get("result", {}).get("value")
                print("click", text, xy, flush=True)
                if not xy:
                    continue
                for t in ("mouseMoved", "mousePressed", "mouseReleased"):
                    await call("Input.dispatchMouseEvent", type=t, x=xy[0], y=xy[1], button="left", clickCount=1)
                await asyncio.sleep(2.5)
            shot = await call("Page.captureScreenshot", format="png")
            open(out, "wb").write(base64.b64decode(shot["data"]))
    finally:
        proc.kill(); proc.wait()

if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
