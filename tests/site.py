"""A small documentation-like website for tests: navigation, sidebars, code blocks, a robots.txt,
links out of the domain, a non-HTML file, a missing page, a duplicate page, a near-duplicate page, a
too-short page, a line of site boilerplate inside every page's content, personal data, and a page in
German."""
from __future__ import annotations

import random
from pathlib import Path

TOPICS = ["lists", "dictionaries", "strings", "functions", "classes", "modules", "exceptions", "files",
          "iterators", "generators", "decorators", "testing"]
SUBJECTS = ["A list", "The interpreter", "This function", "Every module", "The standard library", "A generator",
            "The programmer", "Each object", "An exception", "The compiler", "A dictionary", "The loop"]
VERBS = ["returns", "stores", "creates", "reads", "changes", "holds", "raises", "calls", "describes", "uses"]
OBJECTS = ["a new value", "the whole sequence", "an error message", "the first item", "a small table",
           "the current state", "every element", "the result of the call", "a copy of the data", "the file"]
TAILS = ["when it is needed", "for the user", "in the same way", "at the end of the block", "with care",
         "before it is used", "as the example shows", "in most programs", "without a copy", "by default"]
NAV = '<nav class="topnav"><a href="/index.html">Home</a> | <a href="/about.html">About</a> | NAVTOKEN menu</nav>'
SIDEBAR = '<div class="sphinxsidebar" role="navigation"><h3>SIDEBARTOKEN contents</h3><ul>{links}</ul></div>'
FOOTER = "<footer>FOOTERTOKEN copyright 2026</footer>"
# Inside the main content, so that only the site-wide line count can find it.
BOILERPLATE = "<p>BOILERTOKEN This page belongs to the test documentation, release 1.0 of the example project.</p>"
CONTACT = ("<p>Write to jane.doe@example-corp.com or call +1 415-555-0132 about the server at 93.184.216.34; "
           "the card 4111 1111 1111 1111 is only a test card. The build uses AKIAIOSFODNN7EXAMPLE as its key.</p>")
GERMAN = ("Diese Seite ist auf Deutsch geschrieben. Sie beschreibt, wie man mit Listen und Wörterbüchern "
          "arbeitet, und sie gehört nicht zu den Sprachen, die der Test behalten will. Jeder Absatz enthält "
          "genug Wörter, damit die Spracherkennung sicher ist und das Ergebnis eindeutig bleibt. ")


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
        for _ in range(sentences)
    )


def page(title: str, body: str, links: list[str]) -> str:
    link_items = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<script>var TRACKER = 'SCRIPTTOKEN';</script><style>.x{{color:red}}</style></head><body>"
        f"<header>HEADERTOKEN site banner</header>{NAV}"
        f"{SIDEBAR.format(links=link_items)}"
        f'<div class="body" role="main"><h1>{title}<a class="headerlink" href="#">¶</a></h1>{body}</div>'
        f"{FOOTER}</body></html>"
    )


def topic_body(rng: random.Random, topic: str, links: list[str]) -> str:
    paragraphs = "".join(f"<p>{prose(rng, 6)}</p>" for _ in range(3))
    code = f"<pre>def use_{topic}(value):\n    return [value] * 2\n</pre>"
    inline = " ".join(f'<a href="{href}">see {href}</a>' for href in links)
    return (f"{paragraphs}<h2>Example</h2>{code}<ul><li>{prose(rng, 1)}</li><li>{prose(rng, 1)}</li></ul>"
            f"<p>{inline}</p>{BOILERPLATE}")


def build_site(root: Path, topics: list[str] = TOPICS) -> dict[str, list[str]]:
    """Write the site under `root`; returns the paths a crawl should and should not store."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "private").mkdir(exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    rng = random.Random(7)
    pages = [f"{t}.html" for t in topics]
    index_links = [f"/{p}" for p in pages] + ["/about.html", "/short.html", "/copy-of-lists.html",
                                               "/near-copy-of-strings.html", "/contact.html", "/deutsch.html",
                                               "/private/secret.html", "/files/data.csv", "/missing.html",
                                               "http://elsewhere.example/page.html"]
    (root / "index.html").write_text(page("Index of the test docs", topic_body(rng, "index", index_links), index_links))
    (root / "about.html").write_text(page("About these docs", topic_body(rng, "about", ["/index.html"]), []))
    for i, name in enumerate(pages):
        neighbours = [f"/{pages[(i + 1) % len(pages)]}", "https://other.example/x.html"]
        (root / name).write_text(page(f"Working with {topics[i]}", topic_body(rng, topics[i], neighbours), neighbours))
    lists_html = (root / "lists.html").read_text() if "lists.html" in pages else None
    if lists_html:
        (root / "copy-of-lists.html").write_text(lists_html)
    strings_html = (root / "strings.html").read_text() if "strings.html" in pages else None
    if strings_html:  # one word changed: not an exact duplicate, a near one
        first_object = next(o for o in OBJECTS if o in strings_html)
        (root / "near-copy-of-strings.html").write_text(strings_html.replace(first_object, "an other thing", 1))
    (root / "contact.html").write_text(page("Contact", f"<p>{prose(rng, 8)}</p>{CONTACT}<p>{prose(rng, 8)}</p>", []))
    (root / "deutsch.html").write_text(
        page("Deutsch", f"<p>{GERMAN * 2}</p><p>{GERMAN}</p>", []).replace("lang='en'", "lang='de'"))
    (root / "short.html").write_text(page("Short", "<p>Too short to keep.</p>", []))
    (root / "private" / "secret.html").write_text(page("Secret", "<p>robots.txt forbids this page.</p>", []))
    (root / "files" / "data.csv").write_text("a,b\n1,2\n")
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    stored = ["index.html", "about.html", "short.html", "contact.html", "deutsch.html", *pages]
    stored += (["copy-of-lists.html"] if lists_html else []) + (["near-copy-of-strings.html"] if strings_html else [])
    return {"stored": sorted(stored), "forbidden": ["private/secret.html"]}


ZH_SUBJECTS = ["列表", "这个函数", "每个模块", "标准库", "生成器", "程序员", "解释器", "字典", "这个对象", "异常",
               "编译器", "循环语句", "测试框架", "类的实例", "迭代器", "装饰器", "命令行工具", "网络请求", "数据库连接",
               "配置文件"]
ZH_VERBS = ["返回", "保存", "创建", "读取", "修改", "包含", "抛出", "调用", "描述", "使用", "检查", "打印", "删除",
            "排序", "合并", "比较", "复制", "转换", "记录", "忽略"]
ZH_OBJECTS = ["一个新的值", "整个序列", "一条错误信息", "第一个元素", "一张小表", "当前的状态", "每一个元素",
              "调用的结果", "数据的副本", "这个文件", "用户的输入", "所有的键", "一段文本", "网络上的数据", "临时目录",
              "最后一行", "两个参数", "一个空列表", "日志消息", "缓存的内容"]
ZH_TAILS = ["在需要的时候", "为了用户", "用同样的方式", "在代码块的末尾", "非常小心地", "在使用之前", "正如例子所示",
            "在大多数程序中", "不需要复制", "在默认情况下", "在程序启动时", "每隔一秒", "在测试里", "出错以后",
            "按照文档", "在后台", "一次又一次地", "在循环结束前", "为了安全", "在关闭之前"]
ZH_TOPICS = ["列表", "字典", "字符串", "函数", "类", "模块", "异常", "文件", "迭代器", "生成器"]


def build_chinese_site(root: Path) -> list[str]:
    """A small Chinese documentation site (lang="zh-CN", UTF-8, one page in GBK); returns its page paths."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(11)

    def zh_prose(sentences: int) -> str:
        return "".join(f"{rng.choice(ZH_SUBJECTS)}{rng.choice(ZH_TAILS)}{rng.choice(ZH_VERBS)}{rng.choice(ZH_OBJECTS)}。"
                       for _ in range(sentences))

    names = [f"topic{i}.html" for i in range(len(ZH_TOPICS))]
    links = [f"/{n}" for n in names]
    for i, (name, topic) in enumerate(zip(names, ZH_TOPICS)):
        body = "".join(f"<p>{zh_prose(6)}</p>" for _ in range(4)) + f"<pre>x = {i}\nprint(x)</pre>"
        html = page(f"使用{topic}", body, links).replace("lang='en'", "lang='zh-CN'")
        if i == 1:  # one page in GBK, declared only in its meta tag
            (root / name).write_bytes(html.replace("charset='utf-8'", "charset='gbk'").encode("gbk", errors="xmlcharrefreplace"))
        else:
            (root / name).write_text(html, encoding="utf-8")
    index = page("中文文档", "".join(f"<p>{zh_prose(8)}</p>" for _ in range(3)), links)
    (root / "index.html").write_text(index.replace("lang='en'", "lang='zh-CN'"), encoding="utf-8")
    return ["index.html", *names]
