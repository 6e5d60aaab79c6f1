"use strict";
// The secret comes in the address's fragment (login#SECRET), which the browser never sends to a
// server. It is taken out of the address bar and of this history entry before it is used.
(function () {
  const form = document.getElementById("login-form");
  const input = document.getElementById("secret");
  const status = document.getElementById("login-status");

  async function logIn(secret) {
    status.textContent = "Logging in…";
    let response;
    try {
      response = await fetch("/login", {
        method: "POST",
        body: secret,
        headers: { "Content-Type": "text/plain" },
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      status.textContent = "The board does not answer.";
      return;
    }
    if (response.status === 204) {
      location.replace("/");
      return;
    }
    const reason = (await response.text()).trim();
    status.textContent = reason || `The board refused (${response.status}).`;
    input.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    logIn(input.value.trim());
  });

  const fromAddress = location.hash.slice(1);
  if (fromAddress) {
    history.replaceState(null, "", location.pathname);
    let secret = fromAddress;
    try {
      secret = decodeURIComponent(fromAddress);
    } catch (error) {
      // Not percent-encoded after all: the secret as it came.
    }
    logIn(secret);
  } else {
    input.focus();
  }
})();
