// @ts-check
/**
 * A jsdom window as the global environment, for rendering React in Node.
 * Import it before React, react-dom or @testing-library/react.
 */

import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>", { url: "http://localhost/" });
const globals = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (globalThis));
const jsdomWindow = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (dom.window));

// Everything the window has that Node's global does not (document, navigator,
// HTMLElement, …). Node's own globals (setTimeout, WebSocket if any) win.
for (const key of Object.getOwnPropertyNames(dom.window)) {
  if (key in globalThis) continue;
  Object.defineProperty(globalThis, key, {
    configurable: true,
    get: () => jsdomWindow[key],
  });
}
Object.defineProperty(globalThis, "window", { configurable: true, value: dom.window });
// Node 21+ defines navigator itself; jsdom's says online/offline like a browser.
Object.defineProperty(globalThis, "navigator", { configurable: true, get: () => dom.window.navigator });
// Tell React that this environment wraps updates in act() (testing-library does).
globals["IS_REACT_ACT_ENVIRONMENT"] = true;

export { dom };
