// The console page: the form's button asks for a ticket (a POST with the page's CSRF token),
// then the script opens the websocket the ticket names and joins it to an xterm.js terminal.
// Output arrives as binary frames, notices (taken over, ended) as text frames.
"use strict";

(function () {
  const SLICE = 1024;
  const form = document.getElementById("console-open");
  const screen = document.getElementById("console-screen");
  const status = document.getElementById("console-status");
  if (!form || !screen || typeof Terminal === "undefined") {
    return;
  }
  let terminal = null;
  let socket = null;

  function say(text) {
    status.textContent = text;
  }

  function ensureTerminal() {
    if (terminal === null) {
      terminal = new Terminal({ convertEol: false, cursorBlink: true, screenReaderMode: true });
      terminal.open(screen);
      terminal.onData(function (data) {
        if (socket === null || socket.readyState !== WebSocket.OPEN) {
          return;
        }
        // The server takes at most 4096 bytes a message: a long paste goes in slices of
        // whole characters (at most 4 bytes each in UTF-8).
        const characters = Array.from(data);
        for (let start = 0; start < characters.length; start += SLICE) {
          socket.send(characters.slice(start, start + SLICE).join(""));
        }
      });
    }
    terminal.focus();
    return terminal;
  }

  function connect(url) {
    const term = ensureTerminal();
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + url);
    socket.binaryType = "arraybuffer";
    socket.onopen = function () {
      say("Connected. Press Enter if the screen stays empty.");
    };
    socket.onmessage = function (event) {
      if (typeof event.data === "string") {
        say(event.data);
        term.write("\r\n[" + event.data + "]\r\n");
      } else {
        term.write(new Uint8Array(event.data));
      }
    };
    socket.onclose = function (event) {
      if (event.code === 1008) {
        say("The console was refused: open it again.");
      } else if (status.textContent.indexOf("Connected") === 0) {
        say("The console is closed.");
      }
      socket = null;
    };
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    say("Opening the console…");
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("the server answered " + answer.status);
        }
        return answer.json();
      })
      .then(function (ticket) {
        if (socket !== null) {
          socket.close(1000);
        }
        connect(ticket.url);
      })
      .catch(function (error) {
        say("The console could not be opened: " + error.message + ".");
      });
  });
})();
