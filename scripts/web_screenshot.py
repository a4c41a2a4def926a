"""The README's screenshot of the page, made from the bundled example images only.

    python scripts/web_screenshot.py [--out docs/web_page.jpg]

Starts adain-server (the shipped decoder) and adain-web on free ports, drives headless Chromium
(Debian's chromium and chromium-driver) through the page as a user would: the cat photo, the strokes
example style and the mosaic at weight 0.3, strength 0.9; then saves a screenshot of the result.
"""

from __future__ import annotations

import argparse
import io
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "web_page.jpg")
    args = p.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "adain.server", "--port", "0", "--metrics-port", "0"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    web = None
    try:
        line = server.stdout.readline()
        address = re.search(r"listening on ([^\s\"]+)", line).group(1)  # (a JSON line under --log-format json)
        port = free_port()
        web = subprocess.Popen([sys.executable, "-m", "adain.web", "--server", address, "--port", str(port)],
                               cwd=REPO, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):  # until the page answers and the model is loaded
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,2400"):
            options.add_argument(arg)
        options.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url + "/")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
            driver.find_element(By.ID, "content").send_keys(str(REPO / "examples" / "content" / "cat.jpg"))
            for name in ("strokes", "mosaic"):
                driver.find_element(By.CSS_SELECTOR, f'#gallery button[data-name="{name}"]').click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 2)
            set_range = "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));"
            driver.execute_script(set_range, driver.find_element(By.ID, "weight-1"), "0.3")
            driver.execute_script(set_range, driver.find_element(By.ID, "alpha"), "0.9")
            driver.find_element(By.ID, "submit").click()
            wait.until(lambda d: d.execute_script("const i = document.getElementById('output');"
                                                  "return i.complete && i.naturalWidth > 0;"))
            time.sleep(0.5)  # the layout settles around the result image
            height = driver.execute_script("return document.getElementById('result').getBoundingClientRect().bottom")
            shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shot.crop((0, 0, shot.width, min(shot.height, height + 16))).save(args.out, quality=85)
        finally:
            driver.quit()
        print(f"wrote {args.out}")
    finally:
        for proc in (web, server):
            if proc is not None:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
