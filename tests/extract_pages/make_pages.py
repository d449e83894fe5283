"""Writes the extraction fidelity set: pages in the markup of five kinds of site (Sphinx, DocBook XSL
XHTML, MkDocs Material, a WordPress blog, a phpBB forum), each beside its gold text (`NAME.txt`).

The gold text is what a reader calls the page's main content, written from the content itself, not from
any extractor's output: headings, paragraphs, list items, table cells, code, admonitions, figure captions
and quotations in the content; not navigation, sidebars, tables of contents, breadcrumbs, footers, "edit
this page" and share links, bylines and dates, tags, related posts, comments under a blog post, a forum
post's author panel, signature and buttons. Run it from the repository root:

    python tests/extract_pages/make_pages.py
"""
from __future__ import annotations

import html
from pathlib import Path

HERE = Path(__file__).resolve().parent
e = html.escape

# --------------------------------------------------------------------------------------------- content
# A page is a title and a list of blocks: ("h", level, text), ("p", text), ("ul", [items]), ("ol", [items]),
# ("code", text), ("table", header, rows), ("note", kind, title, text), ("dl", [(term, definition)]),
# ("quote", text), ("figure", caption).

SPHINX = {
    "sphinx-collections": ("collections — Container datatypes", [
        ("p", "This module implements specialized container datatypes providing alternatives to the general "
              "purpose built-in containers, dict, list, set, and tuple."),
        ("table", ["Name", "Description"], [
            ["namedtuple()", "factory function for creating tuple subclasses with named fields"],
            ["deque", "list-like container with fast appends and pops on either end"],
            ["ChainMap", "dict-like class for creating a single view of multiple mappings"],
            ["Counter", "dict subclass for counting hashable objects"],
            ["OrderedDict", "dict subclass that remembers the order entries were added"],
            ["defaultdict", "dict subclass that calls a factory function to supply missing values"]]),
        ("h", 2, "Counter objects"),
        ("p", "A counter tool is provided to support convenient and rapid tallies. For example:"),
        ("code", ">>> cnt = Counter()\n>>> for word in ['red', 'blue', 'red', 'green', 'blue', 'blue']:\n"
                 "...     cnt[word] += 1\n>>> cnt\nCounter({'blue': 3, 'red': 2, 'green': 1})"),
        ("dl", [("class collections.Counter(iterable=None, /, **kwds)",
                 "A Counter is a dict subclass for counting hashable objects. It is a collection where elements "
                 "are stored as dictionary keys and their counts are stored as dictionary values.")]),
        ("note", "note", "Note", "Counters were primarily designed to work with positive integers to represent "
                                 "running counts; however, care was taken to not unnecessarily preclude use cases "
                                 "needing other types or negative values."),
        ("p", "Counter objects support additional methods beyond those available for all dictionaries, such as "
              "elements(), most_common() and subtract()."),
    ]),
    "sphinx-tutorial": ("An informal introduction", [
        ("p", "In the following examples, input and output are distinguished by the presence or absence of "
              "prompts: to repeat the example, you must type everything after the prompt, when the prompt "
              "appears; lines that do not begin with a prompt are output from the interpreter."),
        ("h", 2, "Using the interpreter as a calculator"),
        ("p", "Let's try some simple commands. Start the interpreter and wait for the primary prompt. The "
              "interpreter acts as a simple calculator: you can type an expression at it and it will write the "
              "value."),
        ("code", ">>> 2 + 2\n4\n>>> 50 - 5*6\n20\n>>> (50 - 5*6) / 4\n5.0"),
        ("p", "Division always returns a floating point number. To do floor division and get an integer result "
              "you can use the // operator; to calculate the remainder you can use %."),
        ("note", "note", "Note", "Unlike other languages, special characters such as \\n have the same meaning "
                                 "with both single and double quotes."),
        ("h", 2, "Lists"),
        ("p", "Python knows a number of compound data types, used to group together other values. The most "
              "versatile is the list, which can be written as a list of comma-separated values between square "
              "brackets."),
        ("ul", ["Lists can be indexed and sliced like strings.", "Lists also support concatenation.",
                "Unlike strings, which are immutable, lists are a mutable type."]),
    ]),
    "sphinx-glossary": ("Glossary", [
        ("dl", [("abstract base class", "Abstract base classes complement duck-typing by providing a way to "
                                        "define interfaces when other techniques like hasattr() would be clumsy."),
                ("argument", "A value passed to a function or method when calling the function. There are two "
                             "kinds of argument: keyword arguments and positional arguments."),
                ("bytecode", "Python source code is compiled into bytecode, the internal representation of a "
                             "Python program in the interpreter."),
                ("decorator", "A function returning another function, usually applied as a function "
                              "transformation using the @wrapper syntax."),
                ("generator", "A function which returns a generator iterator. It looks like a normal function "
                              "except that it contains yield expressions."),
                ("iterable", "An object capable of returning its members one at a time, such as lists, strings "
                             "and file objects.")]),
    ]),
    "sphinx-types": ("Numeric types", [
        ("p", "There are three distinct numeric types: integers, floating point numbers, and complex numbers. "
              "All numeric types support the following operations, sorted by ascending priority:"),
        ("table", ["Operation", "Result", "Notes"], [
            ["x + y", "sum of x and y", ""], ["x - y", "difference of x and y", ""],
            ["x * y", "product of x and y", ""], ["x / y", "quotient of x and y", ""],
            ["x // y", "floored quotient of x and y", "(1)"], ["x % y", "remainder of x / y", "(2)"],
            ["abs(x)", "absolute value or magnitude of x", ""], ["int(x)", "x converted to integer", "(3)(6)"],
            ["float(x)", "x converted to floating point", "(4)(6)"], ["pow(x, y)", "x to the power y", "(5)"]]),
        ("p", "Notes:"),
        ("ol", ["Also referred to as integer division. The resultant value is a whole integer.",
                "Not for complex numbers. Instead convert to floats using abs() if appropriate.",
                "Conversion from floating point to integer may round or truncate as in C."]),
        ("note", "seealso", "See also", "The math and cmath modules for more mathematical functions."),
    ]),
    "sphinx-changelog": ("What's new in 3.12", [
        ("p", "This article explains the new features in Python 3.12, compared to 3.11. For full details, see "
              "the changelog."),
        ("h", 2, "Summary: release highlights"),
        ("ul", ["More flexible f-string parsing, allowing many things previously disallowed.",
                "Support for the buffer protocol in Python code.",
                "A new debugging and profiling API.",
                "Support for isolated subinterpreters with separate global interpreter locks."]),
        ("h", 2, "Improved error messages"),
        ("p", "Modules from the standard library are now potentially suggested as part of the error messages "
              "displayed by the interpreter when a NameError is raised to the top level."),
        ("code", ">>> sys.version_info\nTraceback (most recent call last):\n  File \"<stdin>\", line 1, in <module>\n"
                 "NameError: name 'sys' is not defined. Did you forget to import 'sys'?"),
        ("note", "versionchanged", "Changed in version 3.12", "The suggestion is also made for instances of "
                                                             "attribute errors on self."),
    ]),
}

DOCBOOK = {
    "docbook-packages": ("Chapter 3. Installing packages", [
        ("p", "The package manager installs, upgrades and removes software on the system. Each package is an "
              "archive with the files of one program and the list of packages it depends on."),
        ("table", ["Command", "Purpose"], [
            ["apt update", "refresh the lists of available packages"],
            ["apt install name", "install a package and its dependencies"],
            ["apt remove name", "remove a package but keep its configuration"],
            ["apt purge name", "remove a package and its configuration"],
            ["apt list --upgradable", "show the packages with a newer version"]]),
        ("note", "note", "Note", "Commands that change the system must be run as root or through sudo."),
        ("h", 2, "3.1. Pinning a version"),
        ("p", "A preferences file can hold a package at one version, so that an upgrade leaves it alone until "
              "the pin is removed."),
        ("code", "Package: nginx\nPin: version 1.24.*\nPin-Priority: 1001"),
    ]),
    "docbook-network": ("Chapter 5. Network configuration", [
        ("p", "The network is configured by files under the configuration directory; the service reads them at "
              "boot and whenever it is told to reload."),
        ("h", 2, "5.1. Static addresses"),
        ("p", "A static address is written in the interface's section with its prefix length, the gateway and "
              "the name servers to ask."),
        ("code", "[Match]\nName=eth0\n\n[Network]\nAddress=192.168.1.10/24\nGateway=192.168.1.1\nDNS=192.168.1.1"),
        ("note", "warning", "Warning", "Changing the address of a remote machine over the same connection can lock "
                                       "you out: keep a console open until the new address answers."),
        ("h", 2, "5.2. Checking the result"),
        ("ol", ["Reload the configuration.", "List the addresses of every interface.",
                "Ask the gateway for an answer with ping."]),
    ]),
    "docbook-users": ("Chapter 7. Users and groups", [
        ("p", "Every process runs as a user, and every file belongs to a user and a group. Permissions say what "
              "the owner, the group and everyone else may do with a file."),
        ("table", ["File", "Holds"], [
            ["/etc/passwd", "one line per account: name, user id, group id, home directory, shell"],
            ["/etc/shadow", "the password hashes, readable by root only"],
            ["/etc/group", "one line per group with its members"]]),
        ("h", 2, "7.1. Adding a user"),
        ("p", "The adduser command asks for the details it needs and creates the home directory from the "
              "skeleton files."),
        ("note", "tip", "Tip", "Give administrators their own accounts and the sudo group rather than the root "
                               "password."),
    ]),
    "docbook-backup": ("Chapter 9. Backups", [
        ("p", "A backup that has never been restored is a hope, not a backup. Plan the restore first: what must "
              "come back, how fast, and from how far back."),
        ("dl", [("Full backup", "a copy of every selected file, whatever changed since the last one."),
                ("Incremental backup", "the files changed since the last backup of any kind."),
                ("Differential backup", "the files changed since the last full backup.")]),
        ("h", 2, "9.1. Rotating archives"),
        ("p", "Keep daily archives for a week, weekly archives for a month and monthly archives for a year; "
              "the rotation script deletes what falls outside."),
        ("code", "tar --create --gzip --file=/backup/home-$(date +%F).tar.gz /home"),
    ]),
    "docbook-logs": ("Chapter 11. Reading the logs", [
        ("p", "Services write what they do to the journal. Reading it is the first step when something does not "
              "work as expected."),
        ("table", ["Option", "Shows"], [
            ["-u unit", "the messages of one service"], ["-b", "the messages since the last boot"],
            ["-p err", "errors and worse only"], ["-f", "new messages as they arrive"]]),
        ("note", "important", "Important", "The journal is kept in memory unless its directory exists on disk; "
                                           "create it to keep logs across reboots."),
        ("p", "Old entries are removed once the journal reaches its size limit, oldest first."),
    ]),
}

MKDOCS = {
    "mkdocs-getting-started": ("Getting started", [
        ("p", "Material for MkDocs is a powerful documentation framework on top of MkDocs, a static site "
              "generator for project documentation."),
        ("h", 2, "Installation"),
        ("p", "Material for MkDocs is published as a Python package and can be installed with pip, ideally by "
              "using a virtual environment."),
        ("code", "pip install mkdocs-material"),
        ("note", "tip", "Tip", "If you don't have prior experience with Python, we recommend reading Using "
                               "Python's pip to Manage Your Projects' Dependencies."),
        ("p", "This will automatically install compatible versions of all dependencies: MkDocs, Markdown, "
              "Pygments and Python Markdown Extensions."),
    ]),
    "mkdocs-configuration": ("Configuration", [
        ("p", "The configuration file is mkdocs.yml at the root of the project. Only the site name is required; "
              "every other setting has a default."),
        ("table", ["Setting", "Default", "Purpose"], [
            ["site_name", "none", "the title shown in the header"],
            ["site_url", "none", "the canonical address of the published site"],
            ["theme.name", "mkdocs", "which theme renders the pages"],
            ["nav", "all pages", "the order and titles of the navigation"]]),
        ("h", 2, "Minimal example"),
        ("code", "site_name: My Docs\ntheme:\n  name: material"),
        ("note", "warning", "Warning", "Indentation matters in YAML: a setting indented one level too far "
                                       "belongs to the setting above it."),
    ]),
    "mkdocs-admonitions": ("Admonitions", [
        ("p", "Admonitions, also known as call-outs, are an excellent choice for including side content without "
              "significantly interrupting the document flow."),
        ("h", 2, "Usage"),
        ("p", "Admonitions follow a simple syntax: a block starts with three exclamation marks, followed by a "
              "single keyword used as a type qualifier."),
        ("code", "!!! note\n\n    Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
        ("note", "note", "Note", "Nulla et euismod nulla. Curabitur feugiat, tortor non consequat finibus, justo "
                                 "purus auctor massa, nec semper lorem quam in massa."),
        ("h", 2, "Supported types"),
        ("ul", ["note", "abstract", "info", "tip", "success", "question", "warning", "failure", "danger", "bug",
                "example", "quote"]),
    ]),
    "mkdocs-api": ("API reference", [
        ("p", "The client talks to the server over HTTP and returns plain Python objects."),
        ("h", 2, "Client"),
        ("p", "Create one client per process and reuse it: it keeps a pool of connections."),
        ("code", "from example import Client\n\nclient = Client(base_url=\"https://api.example.org\", timeout=10)\n"
                 "items = client.list_items(limit=50)"),
        ("table", ["Parameter", "Type", "Description"], [
            ["base_url", "str", "address of the server"], ["timeout", "float", "seconds before a request fails"],
            ["retries", "int", "how often a failed request is tried again"]]),
        ("note", "danger", "Danger", "Never share a client between processes: the pool's sockets are not safe to "
                                     "fork."),
    ]),
    "mkdocs-faq": ("Frequently asked questions", [
        ("h", 2, "Why is my page not in the navigation?"),
        ("p", "Pages are listed in the navigation only when the nav setting names them or when nav is left out "
              "and every page is found automatically."),
        ("h", 2, "How do I change the colors?"),
        ("p", "Set the primary and accent colors in the palette section of the theme, or override the CSS "
              "variables in an extra stylesheet."),
        ("h", 2, "Can I host the site on a subpath?"),
        ("p", "Yes: set site_url to the full address including the subpath, and links are made relative to it."),
    ]),
}

BLOG = {
    "blog-release": ("Our database is now 40% faster on small writes", [
        ("p", "For the last six months we have been chasing a problem that every user of the database has felt: "
              "small writes waited far longer than their size justified."),
        ("p", "The culprit turned out to be the write-ahead log, which flushed a full page for every commit no "
              "matter how few bytes it carried."),
        ("figure", "Median commit latency before and after the change, measured on the same machine."),
        ("h", 2, "What changed"),
        ("p", "Commits now share a flush when they arrive within the same millisecond. Nothing changes for the "
              "durability guarantee: a commit returns only once its bytes are on disk."),
        ("quote", "We expected a small gain; we did not expect the tail latency to halve."),
        ("p", "The release is available today. Upgrading needs no migration and no downtime."),
    ]),
    "blog-travel": ("Three days on the coastal railway", [
        ("p", "The coastal railway runs for two hundred kilometres between the harbour towns, and for most of "
              "that distance the sea is close enough to hear over the engine."),
        ("p", "We bought the three-day pass at the station, which lets you get off at any stop and continue on a "
              "later train without booking again."),
        ("figure", "The viaduct north of the second harbour, seen from the last carriage."),
        ("h", 2, "Where to stop"),
        ("ul", ["The fishing village with the lighthouse museum.", "The old mill town, for its Saturday market.",
                "The cliff station, only if the weather is clear."]),
        ("p", "Trains run every two hours in winter and every hour in summer, so plan the stops around the "
              "timetable rather than the other way round."),
    ]),
    "blog-news": ("City council approves new cycling lanes", [
        ("p", "The city council voted on Tuesday to build twelve kilometres of protected cycling lanes over the "
              "next two years, the largest such project in the city's history."),
        ("p", "The plan connects the main railway station with the university and the hospital, routes that "
              "together carry a third of the city's commuters."),
        ("quote", "People told us they would cycle if they felt safe. This is the answer to that."),
        ("p", "Construction starts in the spring on the station section. Parking along two streets will be "
              "removed, and the council has promised replacement spaces in a nearby garage."),
        ("p", "Opponents argued that the cost should have gone to road repairs; the vote passed by nineteen to "
              "twelve."),
    ]),
    "blog-recipe": ("A weeknight lentil soup", [
        ("p", "This soup is what we cook when the fridge is nearly empty and nobody wants to go out. It needs "
              "one pot and about forty minutes."),
        ("h", 2, "Ingredients"),
        ("ul", ["200 g red lentils", "1 onion", "2 carrots", "1 litre of stock", "1 teaspoon of cumin",
                "Juice of half a lemon"]),
        ("h", 2, "Method"),
        ("ol", ["Soften the chopped onion and carrots in oil for ten minutes.",
                "Add the cumin, then the lentils and the stock.",
                "Simmer for twenty-five minutes, blend half of it, and finish with the lemon juice."]),
        ("p", "It keeps for three days in the fridge and tastes better on the second."),
    ]),
}

FORUM = {
    "forum-boot": ("System does not boot after kernel update", [
        ("post", "After yesterday's update the machine stops at a black screen right after the boot menu. The "
                 "previous kernel from the advanced options still boots fine. What should I check first?"),
        ("post", "Boot the old kernel and look at the journal of the failed boot with journalctl -b -1. A black "
                 "screen right after the menu is often the graphics driver that was not rebuilt for the new "
                 "kernel."),
        ("post", "That was it. The driver module failed to build because the headers package was missing. After "
                 "installing the headers and rebuilding the module, the new kernel boots normally."),
        ("post", "Good to hear. Mark the thread as solved so that others with the same problem find it."),
    ]),
    "forum-printer": ("Printer prints blank pages over the network", [
        ("post", "My laser printer prints perfectly from USB, but every job sent over the network comes out as "
                 "a blank page. The queue says the job completed."),
        ("post", "Which driver is the network queue using? A generic driver can send a format the printer does "
                 "not understand, and some printers answer that with an empty page."),
        ("post", "It was set to the generic driver. Switching the queue to the manufacturer's driver fixed it; "
                 "thanks for the hint."),
    ]),
    "forum-python": ("Why does my list change when I change its copy?", [
        ("post", "I made a copy of a list of lists with b = a[:], changed b[0][0], and a changed too. I thought "
                 "slicing makes a copy?"),
        ("post", "Slicing makes a shallow copy: the outer list is new, but it holds the same inner lists. Use "
                 "copy.deepcopy(a) when the inner lists must be copied as well."),
        ("post", "Or build the copy yourself with a comprehension, which makes the intent clear to the reader."),
    ]),
}


# --------------------------------------------------------------------------------------------- gold text
def gold(title: str, blocks: list) -> str:
    lines = [title]
    for block in blocks:
        kind = block[0]
        if kind in ("p", "code", "quote", "figure", "post"):
            lines.append(block[1])
        elif kind == "h":
            lines.append(block[2])
        elif kind in ("ul", "ol"):
            lines += block[1]
        elif kind == "table":
            lines += [" ".join(block[1]), *(" ".join(row) for row in block[2])]
        elif kind == "note":
            lines += [block[2], block[3]]
        elif kind == "dl":
            lines += [f"{term} {definition}" for term, definition in block[1]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- Sphinx
def sphinx_block(block) -> str:
    kind = block[0]
    if kind == "p":
        return f"<p>{e(block[1])}</p>"
    if kind == "h":
        slug = block[2].lower().replace(" ", "-")
        return (f'<section id="{slug}"><h{block[1]}>{e(block[2])}<a class="headerlink" href="#{slug}" '
                f'title="Link to this heading">¶</a></h{block[1]}>')
    if kind in ("ul", "ol"):
        cls = "simple" if kind == "ul" else "arabic simple"
        return f'<{kind} class="{cls}">' + "".join(f"<li><p>{e(i)}</p></li>" for i in block[1]) + f"</{kind}>"
    if kind == "code":
        return ('<div class="highlight-pycon notranslate"><div class="highlight"><pre><span></span>'
                f'{e(block[1])}\n</pre></div></div>')
    if kind == "table":
        head = "".join(f'<th class="head"><p>{e(h)}</p></th>' for h in block[1])
        rows = "".join('<tr class="row-odd">' + "".join(f"<td><p>{e(c)}</p></td>" for c in row) + "</tr>"
                       for row in block[2])
        return ('<table class="docutils align-default"><thead><tr class="row-odd">' + head + "</tr></thead><tbody>"
                + rows + "</tbody></table>")
    if kind == "note":
        _, cls, title, text = block
        if cls == "versionchanged":
            return (f'<div class="versionchanged"><p><span class="versionmodified changed">{e(title)}: </span>'
                    f"{e(text)}</p></div>")
        return (f'<div class="admonition {cls}"><p class="admonition-title">{e(title)}</p><p>{e(text)}</p></div>')
    if kind == "dl":
        if block[1][0][0].startswith("class "):
            term, text = block[1][0]
            return (f'<dl class="py class"><dt class="sig sig-object py" id="x"><em class="property">'
                    f'<span class="pre">class</span> </em><span class="sig-name descname">{e(term[6:])}</span>'
                    f'<a class="headerlink" href="#x" title="Link to this definition">¶</a></dt><dd><p>{e(text)}'
                    f"</p></dd></dl>")
        return ('<dl class="simple glossary">' + "".join(
            f'<dt id="term-{e(t)}">{e(t)}<a class="headerlink" href="#term-x" title="Link to this term">¶</a></dt>'
            f"<dd><p>{e(d)}</p></dd>" for t, d in block[1]) + "</dl>")
    raise ValueError(kind)


def sphinx_page(title: str, blocks: list) -> str:
    body = "".join(sphinx_block(b) for b in blocks)
    body += "</section>" * sum(1 for b in blocks if b[0] == "h")
    return f"""<!DOCTYPE html>
<html lang="en" data-content_root="../">
  <head><meta charset="utf-8" /><meta name="viewport" content="width=device-width, initial-scale=1.0" />
    <title>{e(title)} &#8212; Python 3.12.1 documentation</title>
    <link rel="stylesheet" type="text/css" href="../_static/pygments.css" />
    <script src="../_static/documentation_options.js"></script>
  </head><body>
    <div class="mobile-nav"><input type="checkbox" id="menuToggler" class="toggler__input" aria-controls="navigation"
      aria-pressed="false" aria-expanded="false" role="button" aria-label="Menu" />
      <nav class="nav-content" role="navigation"><label for="menuToggler" class="toggler__label"><span></span></label>
        <span class="nav-items-wrapper"><a href="https://www.python.org/" class="nav-logo">Python logo</a>
        <span class="version_switcher_placeholder"></span>
        <form role="search" class="search" action="../search.html" method="get"><input placeholder="Quick search"
          aria-label="Quick search" type="search" name="q" id="search-field" /><input type="submit" value="Go"/></form></span>
      </nav>
      <div class="menu-wrapper"><nav class="menu" role="navigation" aria-label="main navigation">
        <div class="language_switcher_placeholder"></div><h3>Table of Contents</h3><ul><li>Previous topic</li>
        <li>Next topic</li></ul><div role="note" aria-label="source link"><h3>This Page</h3><ul class="this-page-menu">
        <li><a href="../bugs.html">Report a Bug</a></li><li><a href="../_sources/x.rst.txt" rel="nofollow">Show Source
        </a></li></ul></div></nav></div>
    </div>
    <div class="related" role="navigation" aria-label="related navigation"><h3>Navigation</h3><ul>
      <li class="right" style="margin-right: 10px"><a href="../genindex.html" title="General Index" accesskey="I">index</a></li>
      <li class="right"><a href="../py-modindex.html" title="Python Module Index">modules</a> |</li>
      <li><a href="https://www.python.org/">Python</a> &#187;</li><li><a href="../index.html">3.12.1 Documentation</a> &#187;</li>
      <li class="nav-item nav-item-1"><a href="index.html" accesskey="U">The Python Standard Library</a> &#187;</li>
    </ul></div>
    <div class="document"><div class="documentwrapper"><div class="bodywrapper"><div class="body" role="main">
      <section id="top"><h1>{e(title)}<a class="headerlink" href="#top" title="Link to this heading">¶</a></h1>
      {body}</section>
    </div></div></div>
      <div class="sphinxsidebar" role="navigation" aria-label="main navigation"><div class="sphinxsidebarwrapper">
        <div><h3><a href="../contents.html">Table of Contents</a></h3><ul><li><a class="reference internal" href="#">
        {e(title)}</a></li></ul></div><div><h4>Previous topic</h4><p class="topless"><a href="x.html">Built-in Types</a>
        </p></div><div role="note" aria-label="source link"><h3>This Page</h3><ul class="this-page-menu"><li>
        <a href="../bugs.html">Report a Bug</a></li></ul></div></div></div>
    <div class="clearer"></div></div>
    <div class="footer">&copy; <a href="../copyright.html">Copyright</a> 2001-2023, Python Software Foundation.
      <br />This page is licensed under the Python Software Foundation License Version 2.<br />
      Last updated on Dec 05, 2023. <a href="/bugs.html">Found a bug</a>?<br />
      Created using <a href="https://www.sphinx-doc.org/">Sphinx</a> 7.2.6.</div>
  </body></html>
"""


# --------------------------------------------------------------------------------------------- DocBook
def docbook_block(block, chapter: str) -> str:
    kind = block[0]
    if kind == "p":
        return f"<p>{e(block[1])}</p>"
    if kind == "h":
        return (f'<div class="section"><div class="titlepage"><div><div><h2 class="title" style="clear: both">'
                f'<a id="s{len(block[2])}"></a>{e(block[2])}</h2></div></div></div>')
    if kind in ("ul", "ol"):
        cls = "itemizedlist" if kind == "ul" else "orderedlist"
        return (f'<div class="{cls}"><{kind} class="{cls}" type="disc">'
                + "".join(f'<li class="listitem"><p>{e(i)}</p></li>' for i in block[1]) + f"</{kind}></div>")
    if kind == "code":
        return f'<pre class="programlisting">{e(block[1])}</pre>'
    if kind == "table":
        head = "".join(f"<th>{e(h)}</th>" for h in block[1])
        rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2])
        return (f'<div class="informaltable"><table class="informaltable" border="1"><colgroup><col /><col />'
                f"</colgroup><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
    if kind == "note":
        _, cls, title, text = block
        return (f'<div class="{cls}" style="margin-left: 0.5in; margin-right: 0.5in;"><h3 class="title">'
                f"{e(title)}</h3><p>{e(text)}</p></div>")
    if kind == "dl":
        return ('<div class="variablelist"><dl class="variablelist">' + "".join(
            f'<dt><span class="term">{e(t)}</span></dt><dd><p>{e(d)}</p></dd>' for t, d in block[1]) + "</dl></div>")
    raise ValueError(kind)


def docbook_page(title: str, blocks: list) -> str:
    body = "".join(docbook_block(b, title) for b in blocks) + "</div>" * sum(1 for b in blocks if b[0] == "h")
    toc = "".join(f'<dt><span class="section"><a href="#s">{e(b[2])}</a></span></dt>' for b in blocks if b[0] == "h")
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
<title>{e(title)}</title><link rel="stylesheet" type="text/css" href="docbook.css" />
<meta name="generator" content="DocBook XSL Stylesheets V1.79.2" /><link rel="home" href="index.html"
 title="The System Administrator's Handbook" /><link rel="up" href="index.html" title="The System Administrator's Handbook" />
<link rel="prev" href="prev.html" title="Previous chapter" /><link rel="next" href="next.html" title="Next chapter" /></head>
<body><div class="navheader"><table width="100%" summary="Navigation header"><tr><th colspan="3" align="center">
{e(title)}</th></tr><tr><td width="20%" align="left"><a accesskey="p" href="prev.html">Prev</a>&#160;</td>
<th width="60%" align="center">&#160;</th><td width="20%" align="right">&#160;<a accesskey="n" href="next.html">Next</a>
</td></tr></table><hr /></div><div class="chapter"><div class="titlepage"><div><div><h1 class="title"><a id="ch"></a>
{e(title)}</h1></div></div></div><div class="toc"><p><strong>Table of Contents</strong></p><dl class="toc">{toc}</dl>
</div>{body}</div><div class="navfooter"><hr /><table width="100%" summary="Navigation footer"><tr>
<td width="40%" align="left"><a accesskey="p" href="prev.html">Prev</a>&#160;</td><td width="20%" align="center">&#160;</td>
<td width="40%" align="right">&#160;<a accesskey="n" href="next.html">Next</a></td></tr><tr><td width="40%" align="left"
 valign="top">Previous chapter&#160;</td><td width="20%" align="center"><a accesskey="h" href="index.html">Home</a></td>
<td width="40%" align="right" valign="top">&#160;Next chapter</td></tr></table></div></body></html>
"""


# --------------------------------------------------------------------------------------------- MkDocs
def mkdocs_block(block) -> str:
    kind = block[0]
    if kind == "p":
        return f"<p>{e(block[1])}</p>"
    if kind == "h":
        slug = block[2].lower().replace(" ", "-").replace("?", "")
        return (f'<h{block[1]} id="{slug}">{e(block[2])}<a class="headerlink" href="#{slug}" '
                f'title="Permanent link">&para;</a></h{block[1]}>')
    if kind in ("ul", "ol"):
        return f"<{kind}>" + "".join(f"<li>{e(i)}</li>" for i in block[1]) + f"</{kind}>"
    if kind == "code":
        lines = block[1].split("\n")
        numbers = "".join(f'<span class="normal"><a href="#__codelineno-0-{n}">{n}</a></span>\n'
                          for n in range(1, len(lines) + 1))
        code = "".join(f'<span id="__span-0-{n}"><a id="__codelineno-0-{n}" name="__codelineno-0-{n}"></a>{e(line)}\n'
                       f"</span>" for n, line in enumerate(lines, 1))
        return (f'<div class="language-text highlight"><table class="highlighttable"><tr><td class="linenos">'
                f'<div class="linenodiv"><pre><span></span>{numbers}</pre></div></td><td class="code"><div><pre>'
                f'<span></span><code>{code}</code></pre></div></td></tr></table></div>')
    if kind == "table":
        head = "".join(f"<th>{e(h)}</th>" for h in block[1])
        rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2])
        return f'<div class="md-typeset__scrollwrap"><div class="md-typeset__table"><table><thead><tr>{head}</tr>' \
               f"</thead><tbody>{rows}</tbody></table></div></div>"
    if kind == "note":
        _, cls, title, text = block
        return f'<div class="admonition {cls}"><p class="admonition-title">{e(title)}</p><p>{e(text)}</p></div>'
    raise ValueError(kind)


def mkdocs_page(title: str, blocks: list) -> str:
    body = "".join(mkdocs_block(b) for b in blocks)
    toc = "".join(f'<li class="md-nav__item"><a href="#x" class="md-nav__link"><span class="md-ellipsis">{e(b[2])}'
                  f"</span></a></li>" for b in blocks if b[0] == "h")
    return f"""<!doctype html>
<html lang="en" class="no-js"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(title)} - Project Docs</title><link rel="stylesheet" href="../assets/stylesheets/main.css"></head>
<body dir="ltr" data-md-color-scheme="default"><input class="md-toggle" data-md-toggle="drawer" type="checkbox" id="__drawer" autocomplete="off">
<label class="md-overlay" for="__drawer"></label><div data-md-component="skip"><a href="#x" class="md-skip">Skip to content</a></div>
<div data-md-component="announce"></div>
<header class="md-header md-header--shadow" data-md-component="header"><nav class="md-header__inner md-grid" aria-label="Header">
<a href="../" title="Project Docs" class="md-header__button md-logo" aria-label="Project Docs"></a>
<div class="md-header__title" data-md-component="header-title"><div class="md-header__ellipsis"><div class="md-header__topic">
<span class="md-ellipsis">Project Docs</span></div><div class="md-header__topic" data-md-component="header-topic">
<span class="md-ellipsis">{e(title)}</span></div></div></div>
<div class="md-search" data-md-component="search" role="dialog"><label class="md-search__overlay" for="__search"></label>
<div class="md-search__inner" role="search"><form class="md-search__form" name="search"><input type="text" class="md-search__input"
 name="query" aria-label="Search" placeholder="Search"></form><div class="md-search__output"><div class="md-search-result">
<div class="md-search-result__meta">Initializing search</div></div></div></div></div>
<div class="md-header__source"><a href="https://github.com/example/project" title="Go to repository" class="md-source">
<div class="md-source__repository">example/project</div></a></div></nav></header>
<div class="md-container" data-md-component="container"><main class="md-main" data-md-component="main"><div class="md-main__inner md-grid">
<div class="md-sidebar md-sidebar--primary" data-md-component="sidebar" data-md-type="navigation"><div class="md-sidebar__scrollwrap">
<div class="md-sidebar__inner"><nav class="md-nav md-nav--primary" aria-label="Navigation" data-md-level="0"><label class="md-nav__title"
 for="__drawer">Project Docs</label><ul class="md-nav__list"><li class="md-nav__item"><a href="../" class="md-nav__link">
<span class="md-ellipsis">Home</span></a></li><li class="md-nav__item"><a href="../getting-started/" class="md-nav__link">
<span class="md-ellipsis">Getting started</span></a></li><li class="md-nav__item"><a href="../configuration/" class="md-nav__link">
<span class="md-ellipsis">Configuration</span></a></li><li class="md-nav__item"><a href="../faq/" class="md-nav__link">
<span class="md-ellipsis">Frequently asked questions</span></a></li></ul></nav></div></div></div>
<div class="md-sidebar md-sidebar--secondary" data-md-component="sidebar" data-md-type="toc"><div class="md-sidebar__scrollwrap">
<div class="md-sidebar__inner"><nav class="md-nav md-nav--secondary" aria-label="Table of contents"><label class="md-nav__title"
 for="__toc">Table of contents</label><ul class="md-nav__list" data-md-component="toc">{toc}</ul></nav></div></div></div>
<div class="md-content" data-md-component="content"><article class="md-content__inner md-typeset">
<a href="https://github.com/example/project/edit/main/docs/page.md" title="Edit this page" class="md-content__button md-icon">
<svg viewBox="0 0 24 24"><path d="M10 20H6V4h7v5h5v3.1l2-2V8l-6-6H6c-1.1 0-2 .9-2 2v16c0 1.1.9 2 2 2h4v-2Z"/></svg></a>
<h1 id="top">{e(title)}</h1>{body}
<aside class="md-source-file"><span class="md-source-file__fact"><span class="md-icon" title="Last update"></span>
<span class="git-revision-date-localized-plugin git-revision-date-localized-plugin-date">March 3, 2024</span></span></aside>
</article></div></div><button type="button" class="md-top md-icon" data-md-component="top" hidden>Back to top</button></main>
<footer class="md-footer"><nav class="md-footer__inner md-grid" aria-label="Footer"><a href="../prev/" class="md-footer__link
 md-footer__link--prev" aria-label="Previous: Home"><div class="md-footer__title"><span class="md-footer__direction">Previous</span>
<div class="md-ellipsis">Home</div></div></a></nav><div class="md-footer-meta md-typeset"><div class="md-footer-meta__inner md-grid">
<div class="md-copyright">Made with <a href="https://squidfunk.github.io/mkdocs-material/" target="_blank" rel="noopener">
Material for MkDocs</a></div></div></div></footer></div>
<div class="md-dialog" data-md-component="dialog"><div class="md-dialog__inner md-typeset"></div></div>
<script id="__config" type="application/json">{{"base": "..", "features": [], "search": "../assets/javascripts/workers/search.js"}}</script>
</body></html>
"""


# --------------------------------------------------------------------------------------------- blog
def blog_block(block) -> str:
    kind = block[0]
    if kind == "p":
        return f"<p>{e(block[1])}</p>"
    if kind == "h":
        return f'<h{block[1]} class="wp-block-heading">{e(block[2])}</h{block[1]}>'
    if kind in ("ul", "ol"):
        return f'<{kind} class="wp-block-list">' + "".join(f"<li>{e(i)}</li>" for i in block[1]) + f"</{kind}>"
    if kind == "quote":
        return f'<blockquote class="wp-block-quote"><p>{e(block[1])}</p></blockquote>'
    if kind == "figure":
        return (f'<figure class="wp-block-image size-large"><img decoding="async" width="1024" height="576" '
                f'src="/wp-content/uploads/2024/03/photo-1024x576.jpg" alt="" class="wp-image-812"/>'
                f'<figcaption class="wp-element-caption">{e(block[1])}</figcaption></figure>')
    raise ValueError(kind)


def blog_page(title: str, blocks: list) -> str:
    body = "".join(blog_block(b) for b in blocks)
    return f"""<!DOCTYPE html>
<html lang="en-US"><head><meta charset="UTF-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} &#8211; The Example Journal</title><link rel="stylesheet" href="/wp-content/themes/twentytwentyone/style.css">
<script>window._wpemojiSettings = {{"baseUrl": "https://s.w.org/images/core/emoji/14.0.0/72x72/"}};</script></head>
<body class="post-template-default single single-post postid-812 single-format-standard">
<div id="page" class="site"><a class="skip-link screen-reader-text" href="#content">Skip to content</a>
<header id="masthead" class="site-header has-title-and-tagline has-menu" role="banner"><div class="site-branding">
<p class="site-title"><a href="/">The Example Journal</a></p><p class="site-description">Notes from the workshop</p></div>
<nav id="site-navigation" class="primary-navigation" aria-label="Primary menu"><div class="primary-menu-container">
<ul id="primary-menu-list" class="menu-wrapper"><li class="menu-item"><a href="/">Home</a></li><li class="menu-item">
<a href="/about/">About</a></li><li class="menu-item"><a href="/archive/">Archive</a></li><li class="menu-item">
<a href="/contact/">Contact</a></li></ul></div></nav></header>
<div id="content" class="site-content"><div id="primary" class="content-area"><main id="main" class="site-main">
<article id="post-812" class="post-812 post type-post status-publish format-standard hentry category-news entry">
<header class="entry-header alignwide"><h1 class="entry-title">{e(title)}</h1></header>
<div class="entry-content">{body}
<div class="sharedaddy sd-sharing-enabled"><div class="robots-nocontent sd-block sd-social sd-social-icon-text sd-sharing">
<h3 class="sd-title">Share this:</h3><div class="sd-content"><ul><li class="share-twitter"><a class="share-twitter sd-button"
 href="?share=twitter"><span>Twitter</span></a></li><li class="share-facebook"><a href="?share=facebook"><span>Facebook</span>
</a></li><li class="share-end"></li></ul></div></div></div></div>
<footer class="entry-footer default-max-width"><div class="posted-by"><span class="posted-on">Published <time
 class="entry-date published updated" datetime="2024-03-12T09:14:00+00:00">March 12, 2024</time></span><span class="byline">
By <a href="/author/maria/" rel="author">Maria Jensen</a></span></div><div class="post-taxonomies"><span class="cat-links">
Categorized as <a href="/category/news/" rel="category tag">News</a> </span><span class="tags-links">Tagged <a href="/tag/updates/"
 rel="tag">updates</a>, <a href="/tag/releases/" rel="tag">releases</a></span></div></footer></article>
<div class="post-navigation" role="navigation" aria-label="Posts"><div class="nav-links"><div class="nav-previous">
<a href="/prev/" rel="prev"><p class="meta-nav">Previous post</p><p class="post-title">Notes from the spring meetup</p></a></div>
<div class="nav-next"><a href="/next/" rel="next"><p class="meta-nav">Next post</p><p class="post-title">Five tools we could not do
 without this year</p></a></div></div></div>
<div id="comments" class="comments-area default-max-width show-avatars"><h2 class="comments-title">2 comments on this post</h2>
<ol class="comment-list"><li id="comment-41" class="comment even thread-even depth-1"><article id="div-comment-41" class="comment-body">
<footer class="comment-meta"><div class="comment-author vcard"><b class="fn">Tom</b> <span class="says">says:</span></div>
<div class="comment-metadata"><a href="#comment-41"><time datetime="2024-03-12T11:02:00+00:00">March 12, 2024 at 11:02 am</time>
</a></div></footer><div class="comment-content"><p>Great write-up, thanks for sharing the details.</p></div>
<div class="reply"><a rel="nofollow" class="comment-reply-link" href="#respond">Reply</a></div></article></li>
<li id="comment-42" class="comment odd alt thread-odd depth-1"><article id="div-comment-42" class="comment-body">
<footer class="comment-meta"><div class="comment-author vcard"><b class="fn">Ana</b> <span class="says">says:</span></div></footer>
<div class="comment-content"><p>Would love to see a follow-up on this next month.</p></div></article></li></ol>
<div id="respond" class="comment-respond"><h2 id="reply-title" class="comment-reply-title">Leave a comment</h2>
<form action="/wp-comments-post.php" method="post" id="commentform" class="comment-form"><p class="comment-notes">Your email
 address will not be published. Required fields are marked *</p><p class="comment-form-comment"><label for="comment">Comment
</label><textarea id="comment" name="comment"></textarea></p><p class="form-submit"><input name="submit" type="submit"
 id="submit" class="submit" value="Post Comment" /></p></form></div></div>
</main></div></div>
<aside class="widget-area"><section id="search-2" class="widget widget_search"><form role="search" method="get" class="search-form">
<label for="search-form-1">Search&hellip;</label><input type="search" id="search-form-1" class="search-field" name="s" /></form>
</section><section id="recent-posts-2" class="widget widget_recent_entries"><h2 class="widget-title">Recent Posts</h2><ul>
<li><a href="/a/">Notes from the spring meetup</a></li><li><a href="/b/">Five tools we could not do without this year</a></li>
</ul></section></aside>
<footer id="colophon" class="site-footer" role="contentinfo"><div class="site-info"><div class="site-name">The Example Journal
</div><div class="powered-by">Proudly powered by <a href="https://wordpress.org/">WordPress</a>.</div></div></footer></div>
<div id="cookie-notice" role="dialog" class="cookie-notice-hidden"><div class="cookie-notice-container"><span id="cn-notice-text"
 class="cn-text-container">We use cookies to ensure that we give you the best experience on our website.</span>
<a href="#" id="cn-accept-cookie" class="cn-set-cookie cn-button">Ok</a></div></div>
</body></html>
"""


# --------------------------------------------------------------------------------------------- forum
USERS = [("linuxfan", "Posts: 214", "Joined: Mar 2019"), ("helper42", "Posts: 5,802", "Joined: Jan 2012"),
         ("mkowalski", "Posts: 37", "Joined: Aug 2022"), ("admin_ro", "Posts: 12,004", "Joined: Feb 2008")]


def forum_page(title: str, blocks: list) -> str:
    posts = []
    for n, (_, text) in enumerate(blocks):
        user, count, joined = USERS[n % len(USERS)]
        subject = title if n == 0 else f"Re: {title}"
        posts.append(f"""<div id="p{1000 + n}" class="post has-profile bg{1 + n % 2}"><div class="inner">
<dl class="postprofile" id="profile{1000 + n}"><dt class="has-profile-rank no-avatar"><a href="./memberlist.php?mode=viewprofile&amp;u={n}"
 class="username">{user}</a></dt><dd class="profile-rank">Member</dd><dd class="profile-posts"><strong>Posts:</strong>
 <a href="./search.php?author_id={n}">{count.split(': ')[1]}</a></dd><dd class="profile-joined"><strong>Joined:</strong>
 {joined.split(': ')[1]}</dd></dl>
<div class="postbody"><div id="post_content{1000 + n}"><h3 class="first"><a href="#p{1000 + n}">{e(subject)}</a></h3>
<ul class="post-buttons"><li><a href="./posting.php?mode=quote&amp;p={1000 + n}" title="Reply with quote" class="button button-icon-only">
<span>Quote</span></a></li></ul>
<p class="author"><a class="unread" href="#p{1000 + n}" title="Post"><span>Post</span></a><span class="responsive-hide">by
 <strong><a href="./memberlist.php?u={n}" class="username">{user}</a></strong> &raquo; </span>Tue Mar 12, 2024 {9 + n}:15 am</p>
<div class="content">{e(text)}</div>
<div id="sig{1000 + n}" class="signature">Running Debian stable on a ThinkPad. Read the forum rules before posting.</div>
</div></div><div class="back2top"><a href="#top" class="top" title="Top">Top</a></div></div></div><hr class="divider" />""")
    return f"""<!DOCTYPE html>
<html dir="ltr" lang="en-gb"><head><meta charset="utf-8" /><title>{e(title)} - Example Linux Forums</title>
<link href="./styles/prosilver/theme/stylesheet.css" rel="stylesheet"></head>
<body id="phpbb" class="nojs notouch section-viewtopic ltr "><div id="wrap" class="wrap"><a id="top" class="top-anchor"
 accesskey="t"></a><div id="page-header"><div class="headerbar" role="banner"><div class="inner"><div id="site-description"
 class="site-description"><a id="logo" class="logo" href="./index.php" title="Board index"></a><h1>Example Linux Forums</h1>
<p>Help and discussion for users of every distribution</p></div><div id="search-box" class="search-box search-header" role="search">
<form action="./search.php" method="get" id="search"><input name="keywords" id="keywords" type="search" title="Search for keywords"
 placeholder="Search…" /></form></div></div></div><div class="navbar" role="navigation"><div class="inner"><ul id="nav-main"
 class="nav-main linklist" role="menubar"><li><a href="/app.php/help/faq" rel="help" title="Frequently Asked Questions"
 role="menuitem">FAQ</a></li><li><a href="./ucp.php?mode=login" title="Login" accesskey="x" role="menuitem">Login</a></li>
<li><a href="./ucp.php?mode=register" role="menuitem">Register</a></li></ul><ul id="nav-breadcrumbs" class="nav-breadcrumbs
 linklist navlinks" role="menubar"><li class="breadcrumbs"><span class="crumb"><a href="./index.php">Board index</a></span>
<span class="crumb"><a href="./viewforum.php?f=3">Hardware and drivers</a></span></li></ul></div></div></div>
<div id="page-body" class="page-body" role="main">
<h2 class="topic-title"><a href="./viewtopic.php?t=88">{e(title)}</a></h2>
<div class="action-bar bar-top"><a href="./posting.php?mode=reply&amp;t=88" class="button" title="Post a reply">
<span>Post Reply</span></a><div class="search-box" role="search"><form method="get" id="topic-search"><input class="inputbox
 search tiny" type="search" name="keywords" placeholder="Search this topic…" /></form></div><div class="pagination">
{len(blocks)} posts &bull; Page <strong>1</strong> of <strong>1</strong></div></div>
{''.join(posts)}
<div class="action-bar bar-bottom"><a href="./posting.php?mode=reply&amp;t=88" class="button"><span>Post Reply</span></a>
<div class="pagination">{len(blocks)} posts &bull; Page <strong>1</strong> of <strong>1</strong></div></div>
<div class="stat-block online-list"><h3>Who is online</h3><p>Users browsing this forum: No registered users and 4 guests</p></div>
</div><div id="page-footer" class="page-footer" role="contentinfo"><div class="navbar" role="navigation"><div class="inner">
<ul id="nav-footer" class="nav-footer linklist" role="menubar"><li class="breadcrumbs"><span class="crumb"><a href="./index.php">
Board index</a></span></li><li class="rightside">All times are <span title="UTC">UTC</span></li><li class="rightside">
<a href="./ucp.php?mode=delete_cookies" role="menuitem">Delete cookies</a></li></ul></div></div><div class="copyright">
<p class="footer-row"><span class="footer-copyright">Powered by <a href="https://www.phpbb.com/">phpBB</a>&reg; Forum Software
 &copy; phpBB Limited</span></p><p class="footer-row" role="menu"><a class="footer-link" href="./ucp.php?mode=privacy"
 title="Privacy" role="menuitem"><span class="footer-link-text">Privacy</span></a> | <a class="footer-link"
 href="./ucp.php?mode=terms" title="Terms" role="menuitem"><span class="footer-link-text">Terms</span></a></p></div></div>
</div></body></html>
"""


SITES = [("sphinx", SPHINX, sphinx_page), ("docbook", DOCBOOK, docbook_page), ("mkdocs", MKDOCS, mkdocs_page),
         ("blog", BLOG, blog_page), ("forum", FORUM, forum_page)]


def main() -> None:
    for site, pages, render in SITES:
        for name, (title, blocks) in pages.items():
            (HERE / f"{name}.html").write_text(render(title, blocks), encoding="utf-8")
            (HERE / f"{name}.txt").write_text(gold(title, blocks), encoding="utf-8")


if __name__ == "__main__":
    main()
