// ESLint for the client: typescript-eslint's strict type-checked rules on the
// sources and on the JavaScript tests (typed through JSDoc, checked against
// the built package's .d.ts as `npm run typecheck:test` does), and the rules
// of hooks on the React bindings.
import js from "@eslint/js";
import reactHooks from "eslint-plugin-react-hooks";
import tseslint from "typescript-eslint";

/** Where these differ from the preset; each says why. */
const rules = {
  // `() => listener()` is the idiom for passing a callback on; the rule's worth is in blocks and assignments.
  "@typescript-eslint/no-confusing-void-expression": ["error", { ignoreArrowShorthand: true }],
  // Numbers print unambiguously in messages; everything else must still be a string.
  "@typescript-eslint/restrict-template-expressions": ["error", { allowNumber: true }],
  // `const { a: _a, ...rest } = props` is how a key is left out of a copy.
  "@typescript-eslint/no-unused-vars": ["error", { ignoreRestSiblings: true }],
};

export default tseslint.config(
  { ignores: ["dist/", "node_modules/"] },
  js.configs.recommended,
  {
    files: ["src/**/*.ts", "src/**/*.tsx"],
    extends: [tseslint.configs.strictTypeChecked],
    languageOptions: {
      parserOptions: { project: "./tsconfig.json", tsconfigRootDir: import.meta.dirname },
    },
    rules,
  },
  {
    files: ["src/**/*.tsx"],
    plugins: { "react-hooks": reactHooks },
    // The two classic rules only: the plugin's React Compiler rules ask for a
    // rewrite of two deliberate setState-in-effect resets, a behaviour change.
    rules: {
      "react-hooks/rules-of-hooks": "error",
      "react-hooks/exhaustive-deps": "error",
    },
  },
  {
    files: ["test/**/*.js"],
    extends: [tseslint.configs.strictTypeChecked],
    languageOptions: {
      parserOptions: { project: "./tsconfig.test.json", tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      ...rules,
      "@typescript-eslint/no-floating-promises": [
        "error",
        // node:test's test() returns a promise that the runner itself awaits.
        { allowForKnownSafeCalls: [{ from: "package", package: "node:test", name: ["test", "describe", "it"] }] },
      ],
    },
  },
);
